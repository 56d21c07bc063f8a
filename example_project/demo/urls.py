from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

app_name = "demo"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(template_name="demo/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("switch/", views.switch, name="switch"),
    path("checkout/", views.checkout, name="checkout"),
    path("checkout/return/", views.checkout_return, name="checkout-return"),
    path("checkout/cancelled/", views.checkout_cancelled, name="checkout-cancelled"),
    path("portal/", views.portal, name="portal"),
    path("plan/change/", views.change_preview, name="change-preview"),
    path("plan/change/confirm/", views.change_confirm, name="change-confirm"),
    path("plan/cancel/", views.cancel, name="cancel"),
    path("plan/resume/", views.resume, name="resume"),
    path("addon/", views.addon, name="addon"),
    # Top-ups: the same checkout view (a one-time price opens Checkout in mode=payment).
    path("topup/", views.checkout, name="topup"),
    path("catalog/", views.catalog, name="catalog"),
    path("console/", views.console, name="console"),
    path("console/send/", views.send_messages, name="send-messages"),
    path("console/report/", views.start_report, name="start-report"),
    path("console/report/finish/", views.finish_report, name="finish-report"),
    path("usage/", views.usage, name="usage"),
    path("webhooks/", views.webhooks, name="webhooks"),
]

"""Admin for add-ons (features per unit, their recurring prices) and top-up packs.

Mapping goes through the models' ``clean``: only approved prices, recurring for an
add-on and one-time for a pack, and never a price that already sells something else.
"""

from __future__ import annotations

from django.contrib import admin

from ..models import AddOn, AddOnFeature, AddOnItem, AddOnPrice, TopUpPack


class AddOnFeatureInline(admin.TabularInline):
    model = AddOnFeature
    extra = 1
    autocomplete_fields = ["feature"]


class AddOnPriceInline(admin.TabularInline):
    model = AddOnPrice
    extra = 1
    raw_id_fields = ["price"]


@admin.register(AddOn)
class AddOnAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "reset_period", "active"]
    search_fields = ["key", "name"]
    inlines = [AddOnFeatureInline, AddOnPriceInline]


@admin.register(TopUpPack)
class TopUpPackAdmin(admin.ModelAdmin):
    list_display = ["key", "name", "feature", "amount", "expires_after_days", "price", "active"]
    search_fields = ["key", "name"]
    autocomplete_fields = ["feature"]
    raw_id_fields = ["price"]


@admin.register(AddOnItem)
class AddOnItemAdmin(admin.ModelAdmin):
    """Read-only: written by the subscription sync."""

    list_display = ["customer", "addon", "quantity", "current_period_end", "active"]
    list_filter = ["active", "addon"]

    def has_add_permission(self, request: object) -> bool:
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: object, obj: object = None) -> bool:
        return False

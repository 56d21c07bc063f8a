import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
application = get_wsgi_application()

# Import every view now, then exempt what start-up loaded (~140,000 objects: modules,
# classes, functions) from the cyclic collector: a request that allocates many objects
# (a 1,000-event batch) otherwise triggers full collections that walk all of them,
# ~80 ms each: a quarter or more of such a request's CPU on average.
get_resolver().url_patterns  # noqa: B018 - imports the views
gc.freeze()

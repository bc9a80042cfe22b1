"""The admin of delivery: apps, push content, devices, dispatches and deliveries, delivery rules.

Importing this package registers them.
"""

from delivery.admin import apps, contents, devices, dispatches, rules  # noqa: F401  (registers the model admins)

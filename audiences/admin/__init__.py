"""The admin of audiences: segments (the rule builder), profiles, events and CSV imports.

Importing this package registers them.
"""

from audiences.admin import events, imports, profiles, segments  # noqa: F401  (registers the model admins)

"""Date and time formats of the admin's pages (``FORMAT_MODULE_PATH``)."""

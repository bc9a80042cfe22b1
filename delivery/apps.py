from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    verbose_name = "Delivery"

    def ready(self) -> None:
        import delivery.variants  # noqa: F401 (connects the SQLite function of variant buckets)
        from audiences.services.profiles import profile_row_readers_register
        from delivery.models import Device
        from delivery.selectors import devices_visible_to

        profile_row_readers_register(model=Device, rows=devices_visible_to)

from django.apps import AppConfig


class DeliveryConfig(AppConfig):
    name = "delivery"
    verbose_name = "Delivery"

    def ready(self) -> None:
        import delivery.variants  # noqa: F401 (connects the SQLite function of variant buckets)

from django.db import migrations, models

import accounts.encryption


class Migration(migrations.Migration):
    dependencies = [
        ("delivery", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="app",
            name="uses_simulator",
            field=models.BooleanField(
                default=False,
                help_text="Send to the push simulator (manage.py pushsim) instead of Apple and Google: for trying campaigns before holding real credentials.",
                verbose_name="send to the push simulator",
            ),
        ),
        migrations.AddField(
            model_name="app",
            name="apns_team_id",
            field=models.CharField(blank=True, max_length=10, verbose_name="APNs team id"),
        ),
        migrations.AddField(
            model_name="app",
            name="apns_key_id",
            field=models.CharField(blank=True, max_length=10, verbose_name="APNs key id"),
        ),
        migrations.AddField(
            model_name="app",
            name="apns_bundle_id",
            field=models.CharField(
                blank=True,
                help_text="The iOS app's bundle id: the apns-topic of its pushes.",
                max_length=155,
                verbose_name="bundle id",
            ),
        ),
        migrations.AddField(
            model_name="app",
            name="apns_environment",
            field=models.CharField(
                choices=[("production", "Production"), ("sandbox", "Sandbox (development builds)")],
                default="production",
                max_length=10,
                verbose_name="APNs environment",
            ),
        ),
        migrations.AddField(
            model_name="app",
            name="apns_private_key",
            field=accounts.encryption.EncryptedTextField(blank=True, editable=False),
        ),
        migrations.AddField(
            model_name="app",
            name="apns_private_key_fingerprint",
            field=models.CharField(blank=True, editable=False, max_length=40),
        ),
        migrations.AddField(
            model_name="app",
            name="apns_private_key_set_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="app",
            name="fcm_service_account",
            field=accounts.encryption.EncryptedTextField(blank=True, editable=False),
        ),
        migrations.AddField(
            model_name="app",
            name="fcm_service_account_fingerprint",
            field=models.CharField(blank=True, editable=False, max_length=40),
        ),
        migrations.AddField(
            model_name="app",
            name="fcm_service_account_set_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="app",
            name="fcm_project_id",
            field=models.CharField(blank=True, editable=False, max_length=100, verbose_name="FCM project id"),
        ),
        migrations.AddField(
            model_name="app",
            name="fcm_client_email",
            field=models.CharField(blank=True, editable=False, max_length=254, verbose_name="service account"),
        ),
    ]

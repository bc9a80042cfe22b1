from django.db import migrations

ROLES = ("Administrator", "Approver", "Manager", "Viewer")


def teams_without_permissions(apps, schema_editor):
    """Clear the permissions a team (a group that is no role) was given on its page: group permissions
    are read from roles alone (``accounts.backends``), so they gave its members nothing."""
    Group = apps.get_model("auth", "Group")
    Group.permissions.through.objects.exclude(group__name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [("accounts", "0007_approvalrequest_snapshot"), ("auth", "0012_alter_user_first_name_max_length")]

    operations = [migrations.RunPython(teams_without_permissions, migrations.RunPython.noop)]

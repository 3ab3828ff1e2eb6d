from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = []

    operations = [
        migrations.CreateModel(
            name="OutboxTask",
            fields=[
                ("id", models.CharField(max_length=128, primary_key=True, serialize=False)),
                ("backend", models.CharField(max_length=200)),
                ("queue", models.TextField()),
                ("payload", models.BinaryField()),
                ("priority", models.SmallIntegerField(default=0)),
                ("run_at_ms", models.BigIntegerField(null=True)),
                ("unique_key", models.TextField(null=True)),
                ("unique_ttl_ms", models.BigIntegerField(null=True)),
                ("max_attempts", models.IntegerField(null=True)),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "db_table": "vtasks_outbox",
                "indexes": [
                    models.Index(fields=["backend", "created_at"], name="vtasks_outbox_relay")
                ],
            },
        ),
    ]

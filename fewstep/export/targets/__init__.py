"""The exporters each backend names (`Backend.exporter`): `export(ctx, precision) -> Artifact`, one module each."""

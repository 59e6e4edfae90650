"""The search service: config schema, Ray Tune trainable and tuner, MLflow tracking, the CLI."""

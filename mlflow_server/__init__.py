"""Starting, checking and stopping an MLflow tracking server."""

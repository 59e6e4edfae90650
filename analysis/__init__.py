"""Reading runs back from MLflow: reports, promotion of the best checkpoint, sampling."""

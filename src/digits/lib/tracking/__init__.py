"""MLflow, written once: runs and their lifecycle (`runs`), the logged model (`logged_model`),
and the model registry (`registry`)."""

"""MLflow, written once: where runs go (`store`), what they are called (`naming`), what they
record about their code and data (`provenance`) and per epoch (`callbacks`), how a run ends
(`runs`) and how dead processes' runs are ended (`reaping`); the logged model
(`logged_model`) and the model registry (`registry`)."""

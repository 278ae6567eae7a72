"""`make sweep`: an Optuna study over `sweep.space`, each trial a nested MLflow run.

    python -m digits.tools.sweep run [--workers N] [--n-trials N] [--timeout S] [--study S]
    python -m digits.tools.sweep promote      # the best trial's settings into params.yaml
    python -m digits.tools.sweep storage      # print the storage URL (for optuna-dashboard)

`run` opens one parent MLflow run, starts N worker processes on the same study (each trial:
`params.yaml` + `sweep.fixed` + sampled `sweep.space`, trained by the same code as the `train`
stage), then writes `trials.csv`, `best_params.yaml` and the study plots. The study's target is
`n_trials` finished (complete or pruned) trials, so running it again resumes an interrupted sweep;
`timeout` bounds its wall time: no trial starts after it, and trials in flight stop at their next
epoch end (PRUNED, tagged `optuna.stopped_by: timeout`).

- `study`: where the study is stored, its sampler and pruner, trials counted by state;
- `trial`: one trial (sample, prune, train in a child run);
- `workers`: each worker's loop, and the worker processes;
- `launcher`: `make sweep`'s process: the parent run, the workers, the results;
- `orphans`: trials no live worker owns (failed and retried), their runs and checkpoints;
- `results`: trials.csv, best_params.yaml, the plots, the typed summary and best trial.
"""

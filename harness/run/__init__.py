"""Running a matrix: plan (plan.py), the cell recipe every executor calls (cell.py), the executors (local.py,
ray.py, slurm.py), the progress view (progress.py) and the runner that ties them together and ingests results
(runner.py). jobs.py holds the types between the runner and the executors."""

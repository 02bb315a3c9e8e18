"""The tools around a trained run, each a command line (``python -m ssfer_jax.tools.NAME``).

They use the trainer's services (``inference``, ``evaluation``, ``rundir``) and are not part of
the training loop; the one call back in: ``outputs.finish`` (``population.finish`` for a
population run) writes each run's own report.html through ``report.write_run_report``.

* ``predict``: expressions of image files, optionally after ``faces`` (face detection).
* ``evaluate``: a trained run on another dataset or split (label sets mapped).
* ``export``: a trained network as serialized StableHLO that needs only jax and numpy.
* ``report``: one self-contained HTML page of one or more runs (``report_runs`` reads a
  workdir, ``report_figures`` and ``report_html`` draw, ``report_population`` shows a
  population run's members).
* ``convert``: a PyTorch ResNet ``state_dict`` into the format ``models.pretrained`` reads.

Nothing is imported here, so that running one tool loads only what it needs.
"""

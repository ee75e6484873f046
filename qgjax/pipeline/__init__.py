"""The pipeline engine: stages, their configs, on-disk markers, the runner and the report.

  stage.py    Stage (job, config group, needs, wiring, completeness) and completeness checks
  wiring.py   a stage's ConfigDict from its group's config file + `set` values + the wiring
  markers.py  <stage dir>/STAGE_DONE.json: result + config fingerprint; reuse only for the same settings
  runner.py   Recipe, System; run_recipe: the stages in order, skipped or resumed, then the report
  process.py  a stage's job in its own process (its wall time and peak memory)
  report.py   a recipe's report from its evaluate stages and rewards

Recipes (qgjax.recipes) are data built from these pieces; this package knows no method.
"""

"""The reproduction layer: what runs the paper's protocol on top of the steering core.

Batch configs and runs (the `runs` package: config grammar, execution, aggregation, the Ray
executor and its command line; `kernels`), the archive of finished runs
(`archive`), the claims and tables computed from it (`claims`, `results_md`, `report`), the
notebooks' helpers and figures (`nbtools`, `plots`) and the task downloader (`fetch`).
Everything here imports the core (`castlib`, `castlib.methods`); the core never imports this
package.
"""

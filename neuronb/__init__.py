__version__ = "0.1.0"
"neuronb: notebook-first MLOps. `record` and `show_pipeline` are the two calls a stage notebook or JupyterLab needs most."

from .core import NeuronbError, record

_LAZY = {'show_pipeline': 'neuronb.pipeline.show', 'run_pipeline': 'neuronb.pipeline.engine',
         'pipeline_status': 'neuronb.pipeline.engine', 'load_project': 'neuronb.pipeline.project',
         'init_project': 'neuronb.pipeline.project'}

def __getattr__(name):
    "Import the heavier entry points only when they are first used, so `import neuronb` stays fast."
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'neuronb' has no attribute {name!r}")

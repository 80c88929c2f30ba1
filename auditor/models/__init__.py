"""Model files, architectures and hashing."""
from .architectures import (
                            ARCHITECTURES,
                            build_architecture,
                            count_parameters,
                            editable_layers,
                            first_layer,
                            predict_logits,
                            register_architecture,
)
from .files import LOADERS, ModelBundle, bundle_from_state, load_model, read_metadata, save_model, weights_sha256
from .spec import ModelSpec

__all__ = ["ARCHITECTURES", "LOADERS", "ModelBundle", "ModelSpec", "build_architecture",
           "bundle_from_state", "count_parameters", "editable_layers", "first_layer", "load_model",
           "predict_logits", "read_metadata", "register_architecture", "save_model", "weights_sha256"]
# registers the .pt2, .onnx and .skops loaders and savers (onnx and skops are imported lazily)
from . import export_format, onnx_format, sklearn_format  # noqa: E402,F401

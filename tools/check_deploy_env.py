"""Set-up self-check of the deploy extra: ONNX Runtime loads and runs mmdeploy's custom-op
library (a one-node grid_sampler graph in mmdeploy's op domain), as mmdeploy's ORT wrapper
does. Run by tools/setup_env.sh with MMSLAB_EXTRAS=deploy."""
import ctypes
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
import mmdeploy
from mmdeploy.backend.onnxruntime.init_plugins import get_lib_path, get_ops_path
ctypes.CDLL(get_lib_path())  # as mmdeploy's ORTWrapper does
node = helper.make_node('grid_sampler', ['x', 'grid'], ['y'], domain='mmdeploy',
                        interpolation_mode=0, padding_mode=0, align_corners=1)
info = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
graph = helper.make_graph([node], 'g', [info('x'), info('grid')], [info('y')])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17),
                                                helper.make_opsetid('mmdeploy', 1)])
opts = ort.SessionOptions()
opts.register_custom_ops_library(get_ops_path())
sess = ort.InferenceSession(model.SerializeToString(), opts, providers=['CPUExecutionProvider'])
x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
grid = np.array([[[[-1, -1], [1, 1]]]], dtype=np.float32)  # corners (align_corners=1)
y = sess.run(None, {'x': x, 'grid': grid})[0]
assert np.allclose(y.ravel(), [0, 3]), y
print(f'onnxruntime {ort.__version__}  onnx {onnx.__version__}  mmdeploy {mmdeploy.__version__}'
      ' (custom ops run)')

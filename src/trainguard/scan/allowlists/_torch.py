"""PyTorch: what ``torch.load(weights_only=True)`` allows, plus ``nn.Module``, optimizer and
GradScaler reconstruction.

``torch.distributed.checkpoint.filesystem`` has no wildcard: besides the ``_StorageInfo``
record it defines the readers and writers that open checkpoint files.
"""

from __future__ import annotations

from trainguard.scan.allowlists._base import ALL, REF_CALL, REF_NEW, add
from trainguard.scan.uses import Use

__all__: list[str] = []

_TORCH_DTYPES = (
    "bfloat16 bits16 bits1x8 bits2x4 bits4x2 bits8 bool complex128 complex32 complex64 "
    "float16 float32 float4_e2m1fn_x2 float64 float8_e4m3fn float8_e4m3fnuz float8_e5m2 "
    "float8_e5m2fnuz float8_e8m0fnu int1 int16 int2 int3 int32 int4 int5 int6 int64 int7 int8 "
    "qint32 qint8 quint2x4 quint4x2 quint8 uint1 uint16 uint2 uint3 uint32 uint4 uint5 uint6 "
    "uint64 uint7 uint8 half float double long int short cfloat cdouble chalf"
).split()
_TORCH_TENSOR_TYPES = "BFloat16 Bool Byte Char Double Float Half Int Long Short".split()
_TORCH_STORAGE_ONLY = "ComplexDouble ComplexFloat QInt32 QInt8 QUInt2x4 QUInt4x2 QUInt8".split()

add(
    [f"torch.{d}" for d in _TORCH_DTYPES]
    + [f"torch.{t}Storage" for t in _TORCH_TENSOR_TYPES + _TORCH_STORAGE_ONLY]
    + [f"torch.{t}Tensor" for t in _TORCH_TENSOR_TYPES]
    + [f"torch.cuda.{t}Storage" for t in [*_TORCH_TENSOR_TYPES, "ComplexDouble", "ComplexFloat"]]
    + [f"torch.cuda.{t}Tensor" for t in _TORCH_TENSOR_TYPES]
    + [f"torch.sparse.{t}Tensor" for t in _TORCH_TENSOR_TYPES if t != "Bool"]
    + [f"torch.cuda.sparse.{t}Tensor" for t in _TORCH_TENSOR_TYPES if t != "Bool"]
    + [
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.dtype",
        "torch.layout",
        "torch.memory_format",
        "torch.strided",
        "torch.sparse_coo",
        "torch.sparse_csr",
        "torch.sparse_csc",
        "torch.sparse_bsr",
        "torch.sparse_bsc",
        "torch._mkldnn",
        "torch.contiguous_format",
        "torch.channels_last",
        "torch.channels_last_3d",
        "torch.preserve_format",
        "torch.per_channel_affine",
        "torch.per_channel_affine_float_qparams",
        "torch.per_channel_symmetric",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.UntypedStorage",
        "torch.nn.parameter.Parameter",
        "torch.nn.parameter.Buffer",
        "torch.nn.parameter.UninitializedParameter",
        "torch.nn.parameter.UninitializedBuffer",
        "torch.serialization._get_layout",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_sparse_tensor",
        "torch._utils._rebuild_meta_tensor_no_storage",
        "torch._utils._rebuild_nested_tensor",
        "torch._utils._rebuild_wrapper_subclass",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_device_tensor_from_cpu_tensor",
        "torch._utils._rebuild_device_tensor_from_numpy",
        "torch._tensor._rebuild_from_type_v2",
        "torch._utils._rebuild_xla_tensor",
        "torch.autograd.grad_mode.no_grad",
    ],
    ALL,
    "allowed by torch's weights-only unpickler",
)
add(
    "torch.nn.modules.* torch.ao.nn.* torch.nn.quantized.* torch.optim.* "
    "torch.amp.grad_scaler.* torch.cuda.amp.grad_scaler.* "
    "torch.distributed.checkpoint.metadata.* torch.distributed.checkpoint.planner.*",
    REF_NEW,
    "torch class reconstructed from plain state",
)
add(
    [
        f"torch.nn.functional.{fn}"
        for fn in (
            "relu gelu silu tanh sigmoid softmax log_softmax leaky_relu elu selu celu mish "
            "hardswish hardsigmoid hardtanh relu6 softplus softsign glu logsigmoid tanhshrink "
            "softmin gumbel_softmax normalize dropout linear layer_norm"
        ).split()
    ]
    + [f"torch.{fn}" for fn in ("relu", "tanh", "sigmoid", "sin", "cos", "exp", "erf")],
    Use.REF,
    "activation function held by a module as an attribute",
)
add(
    "torch.nn.utils.* torch.ScriptObject torch._C.ScriptObject",
    REF_NEW,
    "torch class reconstructed from plain state (weight/spectral norm, packed params)",
)
add(
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    ALL,
    "torch.distributed.checkpoint enum looked up by value",
)
add(
    "torch.distributed.checkpoint.metadata.MetadataIndex "
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata "
    "torch.distributed.checkpoint.metadata.TensorProperties "
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata "
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata "
    "torch.distributed.checkpoint.metadata.Metadata "
    "torch.distributed.checkpoint.filesystem._StorageInfo "
    "torch.distributed.checkpoint.planner.WriteItemType "
    "torch.distributed.checkpoint.planner.LoadItemType "
    "torch.distributed.checkpoint.metadata.StorageMeta",
    ALL,
    "torch.distributed.checkpoint metadata record (dataclass or enum)",
)
add(
    "torch.amp.grad_scaler._refresh_per_optimizer_state",
    REF_CALL,
    "default factory of a pickled GradScaler's per-optimizer state: takes no arguments and "
    "returns a fresh dict of an enum and an empty dict (extra arguments raise TypeError)",
)

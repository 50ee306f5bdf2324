"""Gateway config: errors name the key, every error is reported, defaults are sane."""

from __future__ import annotations

import pytest

from lookout.gateway.core.config import ConfigError, from_dict, load


def errors(d):
    with pytest.raises(ConfigError) as e:
        from_dict(d)
    return e.value.errors


def test_minimal_and_defaults(tmp_path):
    p = tmp_path / "gw.toml"
    p.write_text('[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "data"\n')
    cfg = load(p)
    assert cfg.broker.embedded and cfg.data_dir == tmp_path / "data"
    assert cfg.registry.offline_after_missed == 3 and cfg.commands.max_attempts == 3
    assert cfg.keystore_path == tmp_path / "data" / "keystore.db"


def test_errors_name_the_key():
    errs = errors({"gateway": {"site": "dongshan"}, "broker": {"url": "mqtt://h", "port": "x"}})
    assert errs == ["[broker].port: unknown key"]
    errs = errors({"gateway": {"site": "Dong Shan"}, "broker": {"url": "http://x", "keepalive_s": "x"},
                   "registry": {"offline_after_mised": 3, "stale_after_missed": 0},
                   "commands": {"retry_s": -1}, "metrics": {"listen": "nowhere"}, "extra": {}})
    text = "\n".join(errs)
    assert "[extra]: unknown section" in text
    assert "[gateway].site: expected an id" in text
    assert "[broker].url: expected mqtt://host[:port] or mqtts://host[:port], got 'http://x'" in text
    assert "[broker].keepalive_s: expected integer 5..3600, got 'x'" in text
    assert "[registry].offline_after_mised: unknown key" in text
    assert "[registry].stale_after_missed: expected integer 1..100, got 0" in text
    assert "[commands].retry_s: expected integer 1..3600, got -1" in text
    assert "[metrics].listen: expected host:port, got 'nowhere'" in text


def test_cross_field_rules():
    text = "\n".join(errors({"gateway": {"site": "s"}, "registry": {"stale_after_missed": 3},
                             "broker": {"url": "mqtt://h", "cert": "c.pem", "ca": "ca.pem"}}))
    assert "[registry].stale_after_missed: must be below offline_after_missed (3), got 3" in text
    assert "[broker].cert: cert and key must be given together" in text
    assert "[broker].ca: a CA is only used with an mqtts:// url" in text
    assert errors({}) == ["[gateway].site: required (the site id this gateway serves)"]


def test_toml_syntax_error(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[gateway\nsite=1")
    with pytest.raises(ConfigError, match="TOML syntax error"):
        load(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_example_config_is_valid():
    from pathlib import Path
    cfg = load(Path(__file__).resolve().parents[1] / "deploy" / "gateway.example.toml")
    assert cfg.site and cfg.broker.url


def test_embedded_broker_port():
    cfg = from_dict({"gateway": {"id": "gw", "site": "s1", "data_dir": "/tmp/x"}})
    assert cfg.broker.embedded and cfg.broker.embedded_port == 1883
    cfg = from_dict({"gateway": {"id": "gw", "site": "s1", "data_dir": "/tmp/x"}, "broker": {"embedded_port": 0}})
    assert cfg.broker.embedded_port == 0
    with pytest.raises(ConfigError) as e:
        from_dict({"gateway": {"id": "gw", "site": "s1", "data_dir": "/tmp/x"}, "broker": {"embedded_port": 70000}})
    assert "[broker].embedded_port" in str(e.value)


def test_log_format_key_and_json_lines():
    import json
    import logging

    from lookout.gateway.core.logs import JsonFormatter

    cfg = from_dict({"gateway": {"id": "gw", "site": "s1", "data_dir": "/tmp/x", "log_format": "json"}})
    assert cfg.log_format == "json"
    assert errors({"gateway": {"id": "gw", "site": "s1", "data_dir": "/tmp/x", "log_format": "xml"}}) == [
        "[gateway].log_format: expected one of text, json, got 'xml'"]
    rec = logging.LogRecord("gateway.mqtt", logging.WARNING, __file__, 1, "lost %s", ("spk-01",), None)
    rec.device = "spk-01"
    line = json.loads(JsonFormatter().format(rec))
    assert line["level"] == "warning" and line["logger"] == "gateway.mqtt"
    assert line["msg"] == "lost spk-01" and line["device"] == "spk-01" and line["ts"].endswith("Z")

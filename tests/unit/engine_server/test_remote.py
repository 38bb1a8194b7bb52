"""The front-end's tcp:// token source against an in-process engine server (fake batched engine)."""

from __future__ import annotations

import dataclasses
import gc
import threading
import time
from pathlib import Path

import pytest

from tabfill.completion.engine_client import EngineUnavailable
from tabfill.completion.remote import RemoteSource
from tabfill.completion.tokenizer_file import FileTokenizer
from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule
from tests.support import make_tiny_model_dir
from tests.unit.engine_server.fakes import engine_server


def prompt(ids: tuple[int, ...] = (1, 2, 3), new_tokens: int = 4) -> Prompt:
    return Prompt(ids, new_tokens, StopRule())


def test_generate_streams_to_the_end_and_the_tokenizer_is_cached_by_id(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        source = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"], cache_dir=tmp_path)
        try:
            generation = source.generate(prompt(), CancelToken(), Deadline.after_ms(5000))
            assert (generation.token_ids, generation.text, generation.finish_reason) == ((4, 5, 6, 7), "4,5,6,7,", "length")
            assert generation.continuation is None
            assert source.tokenizer("t5 t7", add_special_tokens=False)["input_ids"] == [5, 7]
            assert source.describe()["tenant"] == "alice"
        finally:
            source.close()
        assert len(list((tmp_path / "engine-tokenizers").iterdir())) == 1


def test_the_deadline_returns_what_has_arrived_and_resume_continues_the_open_request(tmp_path: Path) -> None:
    with engine_server(tmp_path, step_delay_s=0.02) as running:
        source = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"])
        try:
            first = source.generate(prompt(new_tokens=20), CancelToken(), Deadline.after_ms(100))
            assert first.finish_reason == "deadline" and first.continuation is not None
            assert 0 < len(first.token_ids) < 20
            rest = source.resume(first.continuation, CancelToken(), Deadline.after_ms(5000))
            assert rest.finish_reason == "length" and rest.token_ids == tuple(range(4, 24))
            assert rest.text.startswith(first.text)
        finally:
            source.close()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(predicate())


def test_a_cancelled_resume_leaves_the_continuation_open_and_dropping_it_cancels_it_on_the_engine(tmp_path: Path) -> None:
    with engine_server(tmp_path, step_delay_s=0.02) as running:
        source = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"])
        try:
            first = source.generate(prompt(new_tokens=60), CancelToken(), Deadline.after_ms(60))
            cancel = CancelToken()
            cancel.cancel("preempted")  # a background slice taken off the worker: it only stops reading
            assert source.resume(first.continuation, cancel, Deadline.after_ms(1000)).finish_reason == "cancelled"
            time.sleep(0.1)
            assert running.engine.cancelled == []
            rest = source.resume(first.continuation, CancelToken(), Deadline.after_ms(300))
            assert len(rest.token_ids) > len(first.token_ids)
            del first, rest  # the service dropped the continuation
            gc.collect()
            assert wait_for(lambda: len(running.engine.cancelled) == 1)
        finally:
            source.close()


def test_cancelling_a_generate_cancels_it_on_the_engine(tmp_path: Path) -> None:
    with engine_server(tmp_path, step_delay_s=0.02) as running:
        source = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"])
        try:
            cancel = CancelToken()
            threading.Timer(0.1, cancel.cancel).start()
            assert source.generate(prompt(new_tokens=60), cancel, Deadline.after_ms(5000)).finish_reason == "cancelled"
            assert wait_for(lambda: len(running.engine.cancelled) == 1)
        finally:
            source.close()


def test_a_newer_request_of_the_document_supersedes_the_open_one_and_the_uri_stays_here(tmp_path: Path) -> None:
    with engine_server(tmp_path, step_delay_s=0.02) as running:
        source = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"])
        sent: list[dict] = []
        open_stream = source.client.open_stream
        source.client.open_stream = lambda frame: (sent.append(frame), open_stream(frame))[1]  # type: ignore[method-assign]
        try:
            uri = "file:///home/alice/secret-project/main.py"
            first = source.generate(prompt(new_tokens=60), CancelToken(), Deadline.after_ms(60), document=uri)
            assert first.finish_reason == "deadline"
            other = source.generate(prompt((5, 6), new_tokens=2), CancelToken(), Deadline.after_ms(5000), document="file:///b.py")
            newer = source.generate(prompt((7, 8), new_tokens=2), CancelToken(), Deadline.after_ms(5000), document=uri)
            assert (other.finish_reason, newer.finish_reason) == ("length", "length")
            # the engine ended the older generation of the document: resuming it says so (the service starts over)
            assert source.resume(first.continuation, CancelToken(), Deadline.after_ms(2000)).finish_reason == "cancelled"
            assert source.last_done["finish"] == "superseded"
            keys = [frame["document"] for frame in sent]
            assert keys[0] == keys[2] != keys[1] and len(keys[0]) == 32
            assert all("secret" not in str(frame) and "main.py" not in str(frame) for frame in sent)
            again = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"])
            assert again.document_key(uri) != keys[0]  # another process's key: nothing to match against
            again.close()
        finally:
            source.close()


def test_warm_prefills_on_the_engine_so_the_next_request_finds_its_prefix(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        source = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"])
        try:
            ids = [11, 12, 13, 14, 15, 16]
            assert source.warm(ids, CancelToken(), document="file:///a.py") == 0
            assert wait_for(lambda: source.status()["scheduler"]["warms"]["done"] == 1)
            (warmed,) = running.engine.seen[next(iter(running.engine.seen))]
            assert warmed == tuple(ids)
            generation = source.generate(prompt((*ids, 17)), CancelToken(), Deadline.after_ms(5000))
            assert generation.cached_tokens == len(ids)
        finally:
            source.close()


def test_a_wrong_token_fails_at_once_with_the_engines_reason(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="unauthorized"):
            RemoteSource(f"tcp://127.0.0.1:{running.port}", "alice.nope", connect_timeout_s=10)
        assert time.monotonic() - started < 5


def test_engine_restart_answers_empty_meanwhile_one_down_message_then_reconnects(tmp_path: Path) -> None:
    states: list[str] = []
    with engine_server(tmp_path / "a") as running:
        port = running.port
        source = RemoteSource(f"tcp://127.0.0.1:{port}", running.tokens["alice"], on_state=lambda state, why: states.append(state))
        outages: list[str | None] = []
        source.on_outage = outages.append
        assert source.generate(prompt(), CancelToken(), Deadline.after_ms(5000)).finish_reason == "length"
    try:
        time.sleep(0.3)
        for _ in range(3):
            started = time.monotonic()
            down = source.generate(prompt(), CancelToken(), Deadline.after_ms(5000))
            assert (down.finish_reason, down.text) == ("error", "")
            assert time.monotonic() - started < 0.5  # never hangs
        assert states == ["down"]
        assert len(outages) == 1 and "unreachable" in str(outages[0])  # one message per outage
        (tmp_path / "a" / "tokens").rename(tmp_path / "saved")
        (tmp_path / "b").mkdir()
        with engine_server(tmp_path / "b", port=port) as restarted:
            restarted.server.tokens.path.write_text((tmp_path / "saved").read_text())  # the same tenants
            restarted.server.tokens.reload()
            deadline = time.monotonic() + 15
            while states[-1:] != ["up"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert states == ["down", "up"]
            assert outages[1:] == [None]
            assert source.generate(prompt(), CancelToken(), Deadline.after_ms(5000)).finish_reason == "length"
    finally:
        source.close()


def test_the_engine_tokenizer_encodes_and_decodes_as_the_transformers_one(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    directory = make_tiny_model_dir(tmp_path / "tiny", fim_family="starcoder")
    reference = AutoTokenizer.from_pretrained(directory)
    special = {f"{name}_token": getattr(reference, f"{name}_token") for name in ("bos", "eos", "unk", "pad")}
    special.update({f"{name}_token_id": getattr(reference, f"{name}_token_id") for name in ("bos", "eos", "unk", "pad")})
    mine = FileTokenizer.from_json(reference.backend_tokenizer.to_str().encode(), special)
    text = "def add(a, b):\n    return a + b  # <fim_prefix> é\n"
    for add_special in (True, False):
        ours = mine(text, add_special_tokens=add_special, return_offsets_mapping=True)
        theirs = reference(text, add_special_tokens=add_special, return_offsets_mapping=True)
        assert ours["input_ids"] == list(theirs["input_ids"])
        assert ours["offset_mapping"] == [tuple(pair) for pair in theirs["offset_mapping"]]
    ids = mine(text)["input_ids"]
    assert mine.decode(ids) == reference.decode(ids, skip_special_tokens=False)
    assert mine.convert_ids_to_tokens(ids) == reference.convert_ids_to_tokens(ids)
    assert mine.convert_tokens_to_ids("<fim_prefix>") == reference.convert_tokens_to_ids("<fim_prefix>")
    assert set(mine.get_vocab()) == set(reference.get_vocab())
    assert {i: str(t) for i, t in mine.added_tokens_decoder.items()} == {i: str(t) for i, t in reference.added_tokens_decoder.items()}
    assert (mine.eos_token, mine.eos_token_id, len(mine)) == (reference.eos_token, reference.eos_token_id, len(reference))


def test_the_remote_source_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from tabfill.completion.remote import RemoteSource\n"
        "from tabfill.completion.types import CancelToken, Deadline, Prompt, StopRule\n"
        f"source = RemoteSource(sys.argv[1], sys.argv[2])\n"
        "generation = source.generate(Prompt((1, 2), 2, StopRule()), CancelToken(), Deadline.after_ms(5000))\n"
        "print(generation.finish_reason, sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
    )
    with engine_server(tmp_path) as running:
        done = subprocess.run([sys.executable, "-c", script, f"tcp://127.0.0.1:{running.port}", running.tokens["alice"]],
                              capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "length []", done.stderr


def test_tcps_speaks_tls_and_verifies_the_engine_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with engine_server(tmp_path, ssl_context=context) as running:
        with pytest.raises(EngineUnavailable):  # an unknown certificate is refused
            RemoteSource(f"tcps://127.0.0.1:{running.port}", running.tokens["alice"], connect_timeout_s=0.5)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        source = RemoteSource(f"tcps://127.0.0.1:{running.port}", running.tokens["alice"])
        try:
            assert source.generate(prompt(), CancelToken(), Deadline.after_ms(5000)).text == "4,5,6,7,"
        finally:
            source.close()


def test_the_source_factory_opens_the_team_engine_for_tcp_and_reports_a_bad_token_as_a_model_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tabfill.completion.models import ModelError
    from tabfill.completion.settings import parse_settings
    from tabfill.completion.sources import open_source

    monkeypatch.setenv("TABFILL_CACHE_DIR", str(tmp_path / "cache"))
    with engine_server(tmp_path) as running:
        settings, problems = parse_settings({"engine": f"tcp://127.0.0.1:{running.port}", "engineToken": running.tokens["bob"]})
        assert problems == [] and running.tokens["bob"] not in repr(settings)
        stages: list[str] = []
        source = open_source(settings, lambda stage, fraction: stages.append(stage))
        try:
            assert isinstance(source, RemoteSource) and source.describe()["tenant"] == "bob"
            assert source.info.template == "prefix-only" and stages[0].startswith("connecting to the team engine")
        finally:
            source.close()
        bad, _ = parse_settings({"engine": f"tcp://127.0.0.1:{running.port}", "engineToken": "bob.wrong"})
        with pytest.raises(ModelError, match="unauthorized"):
            open_source(bad, lambda stage, fraction: None)


def test_warm_is_sent_only_to_an_engine_that_lists_it_and_a_bad_one_does_not_confuse_status(tmp_path: Path) -> None:
    with engine_server(tmp_path) as running:
        source = RemoteSource(f"tcp://127.0.0.1:{running.port}", running.tokens["alice"])
        try:
            assert source.client.welcome is not None and "warm" in source.client.welcome.features
            source.client.send({"type": "warm", "prompt": [1]})  # too short: an error without an id
            time.sleep(0.2)
            assert source.status()["type"] == "status"
            source.client.welcome = dataclasses.replace(source.client.welcome, features=frozenset())  # an older engine
            source.warm([1, 2, 3], CancelToken())
            assert source.warms == 0
        finally:
            source.close()

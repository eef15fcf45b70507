"""Shared fixtures: virtual sound cards on a private PulseAudio server.

Use the session fixture ``soundcards`` in any test that needs real PortAudio streams::

    def test_something(soundcards):
        cards = soundcards.up("be1", "nl1")      # {"be1": CardNames, "nl1": CardNames}
        c = cards["be1"]
        c.input, c.output       # gateway side:  "brug_be1_in", "brug_be1_out"
        c.air_rx, c.air_tx      # terminal side: "brug_be1_air_rx", "brug_be1_air_tx"

What is played into ``air_rx`` arrives at ``input``; what is played into ``output`` can be
recorded from ``air_tx`` (see docs/soundcards.md). Devices are named, so pass the names to
``sounddevice``/``SoundCardPort`` directly.

- One server per test session, in its own runtime dir under pytest's tmp path: parallel
  sessions (several engineers, CI) never collide. It is stopped at the end of the session.
- ``up()`` is idempotent (existing cards are reused) and re-initialises PortAudio in the test
  process when it created new cards, so ``sd.query_devices()`` lists them. PortAudio
  re-initialisation closes every open stream: call ``up()`` at the start of a test, before
  opening streams, never while another stream of yours runs.
- The process environment gets ``PULSE_SERVER``, ``ALSA_CONFIG_PATH``, ``XDG_RUNTIME_DIR`` and
  ``BRUG_RUNTIME_DIR`` of the private server, so child processes (``brug run``, ``pactl``)
  reach the same cards; ``soundcards.env`` holds them for ``subprocess`` calls.
- ``soundcards.remove(name)`` unloads a card's sinks (device loss drills); ``up(name)`` brings
  it back. ``soundcards.cards`` is the underlying :class:`brug.gateway.soundcards.SoundCards`.
- Skipped (not failed) when PulseAudio/pactl/PortAudio are not installed.
- A test that uses the fixture runs again (up to three times, 10 s apart) when it fails: the
  audio server and PortAudio's ALSA plugin path run on an ordinary scheduler on shared 2-core
  machines and now and then lose a buffer the gateway never saw (the ports' counters say so in
  the failure).
  A real defect fails all four runs; ``-p no:rerunfailures`` shows every failure; the
  summary (``-rR``) names the tests that needed a rerun and why each attempt failed (the
  plugin's ``--rerun-show-tracebacks``, switched on here).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from brug.gateway.soundcards import CardNames, SoundCards, refresh_portaudio


class VirtualCards:
    """Handle the ``soundcards`` fixture yields; see this module's docstring."""

    def __init__(self, cards: SoundCards) -> None:
        self.cards = cards
        self._known: set[str] = set()

    @property
    def env(self) -> dict[str, str]:
        """Environment that lets another process reach these cards."""
        return self.cards.env()

    @property
    def runtime_dir(self) -> Path:
        return self.cards.runtime_dir

    def up(self, *names: str, rate_hz: int = 48000) -> dict[str, CardNames]:
        """Create (or reuse) cards ``names``; return name -> device names."""
        made = self.cards.up(list(names), rate_hz=rate_hz)
        if not set(names) <= self._known:  # PortAudio lists devices only at initialisation
            refresh_portaudio()
        self._known |= set(names)
        return made

    def remove(self, name: str) -> None:
        """Unload the sinks of card ``name`` (its four devices stop working)."""
        self.cards.remove(name)


@pytest.fixture(scope="session")
def soundcards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualCards]:
    """A private PulseAudio server for this session; ``.up(*names)`` creates cards."""
    for tool in ("pulseaudio", "pactl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (Debian: pulseaudio, pulseaudio-utils)")
    try:
        import sounddevice  # noqa: F401
    except OSError as exc:  # PortAudio library missing
        pytest.skip(f"PortAudio not available: {exc}")
    runtime = tmp_path_factory.mktemp("pa")
    if len(str(runtime)) > 80:  # unix socket paths are short; fall back to a short tmp dir
        import tempfile

        runtime = Path(tempfile.mkdtemp(prefix="brug-pa-"))
    cards = SoundCards(runtime)
    saved = {k: os.environ.get(k) for k in cards.env()}
    cards.start()
    cards.stop_with_this_process()   # also when this session is killed or crashes
    cards.write_config()
    cards.apply_env()
    refresh_portaudio()
    try:
        yield VirtualCards(cards)
    finally:
        cards.down()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pytest_configure(config: pytest.Config) -> None:
    """Show why each rerun attempt failed, so a CI log says whether a rerun was the platform
    (the ports' xrun counters in the message) or the gateway."""
    if config.pluginmanager.hasplugin("rerunfailures"):
        config.option.rerun_show_tracebacks = True


#: Seconds before a rerun: the platform's bad spells (PulseAudio itself running at 50-70 % of
#: real time, the test rig's own path failing) last a minute or more on a shared machine, and
#: three reruns a second apart all fell into the same one.
RERUN_DELAY_S = 10


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on real PortAudio streams get up to three reruns (see the module docstring); not
    where the rerun plugin is off (the child pytest of an isolated drill runs a test once)."""
    if not config.pluginmanager.hasplugin("rerunfailures"):
        return
    for item in items:
        if "soundcards" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.flaky(reruns=3, reruns_delay=RERUN_DELAY_S))

"""Virtual sound cards on a private PulseAudio server: ``brug soundcards up|down|env``.

Each named port gets two PulseAudio null sinks and four ALSA PCMs (``type pulse``, with
``hint { show on }`` so PortAudio lists them)::

    terminal side (tests, demo, bench)            gateway side (SoundCardPort)

    brug_NAME_air_rx --play--> [sink brug_NAME_air] --monitor--> brug_NAME_in  (capture)
    brug_NAME_air_tx <-monitor-- [sink brug_NAME_tx] <--play--- brug_NAME_out (playback)

What is played into ``brug_NAME_air_rx`` (what the terminal receives over the air) arrives at the
gateway's input ``brug_NAME_in``; what the gateway plays into ``brug_NAME_out`` can be recorded
from ``brug_NAME_air_tx`` (what the terminal would transmit).

The server runs in its own runtime directory (default ``$BRUG_RUNTIME_DIR``, else
``$XDG_RUNTIME_DIR/brug``, else ``/tmp/brug-$UID``), so parallel users and test sessions never
collide. A separate process reaches the cards with the environment :meth:`SoundCards.env`
returns (``PULSE_SERVER``, ``ALSA_CONFIG_PATH``, ``XDG_RUNTIME_DIR``), which ``up`` also writes
to ``RUNTIME_DIR/env`` for ``brug soundcards env``.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Where the system ALSA configuration lives; ALSA_CONFIG_PATH replaces alsa-lib's default
#: list, so ours must name the system file first.
SYSTEM_ALSA_CONF = ("/usr/share/alsa/alsa.conf", "/etc/alsa/alsa.conf")

#: Silent source feeding the keep-alive loopbacks (see :meth:`SoundCards.up`).
SILENCE_SOURCE = "brug_silence"
#: Default sink of the server, so no stream ever lands on a card by default.
NOWHERE_SINK = "brug_nowhere"
#: Latency the keep-alive loopbacks ask for, ms: the block size the null sinks render in.
KEEPALIVE_LATENCY_MS = 20
#: Wait after creating sinks until their first (2 s) block has passed, s.
NEW_SINK_SETTLE_S = 2.1

#: The watchdog of :meth:`SoundCards.stop_with_this_process`: it blocks reading its stdin (a
#: pipe whose only writer is the process that started it) and, at end of file, that is when
#: that process has ended however it ended, sends SIGTERM to the server if the pid is still a
#: pulseaudio process.
_REAPER = """
import os, signal, sys
sys.stdin.buffer.read()
pid = int(sys.argv[1])
try:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        if b"pulseaudio" in f.read():
            os.kill(pid, signal.SIGTERM)
except OSError:
    pass
"""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")


class SoundCardError(RuntimeError):
    """The PulseAudio server could not be started or configured (``user_error``: one line)."""

    user_error = True


@dataclass(frozen=True)
class CardNames:
    """The four ALSA device names (as PortAudio lists them) of one virtual port."""

    name: str

    @property
    def input(self) -> str:
        """Gateway capture device (``brug_NAME_in``)."""
        return f"brug_{self.name}_in"

    @property
    def output(self) -> str:
        """Gateway playback device (``brug_NAME_out``)."""
        return f"brug_{self.name}_out"

    @property
    def air_rx(self) -> str:
        """Terminal side: play here what the terminal receives; it reaches :attr:`input`."""
        return f"brug_{self.name}_air_rx"

    @property
    def air_tx(self) -> str:
        """Terminal side: record here what the gateway transmits through :attr:`output`."""
        return f"brug_{self.name}_air_tx"

    @property
    def rx_sink(self) -> str:
        return f"brug_{self.name}_air"

    @property
    def tx_sink(self) -> str:
        return f"brug_{self.name}_tx"


def default_runtime_dir() -> Path:
    """``$BRUG_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/brug``, else ``/tmp/brug-$UID``."""
    if os.environ.get("BRUG_RUNTIME_DIR"):
        return Path(os.environ["BRUG_RUNTIME_DIR"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "brug"
    return Path(f"/tmp/brug-{os.getuid()}")


def _system_alsa_conf() -> str:
    for p in SYSTEM_ALSA_CONF:
        if Path(p).exists():
            return p
    raise SoundCardError("no system ALSA configuration found (is libasound2 installed?)")


class SoundCards:
    """A private PulseAudio server with virtual sound cards (null sinks + ALSA PCMs).

    Parameters
    ----------
    runtime_dir:
        Directory holding the server socket (``pulse/native``), the ALSA config
        (``asound.conf``) and the environment file (``env``). Default
        :func:`default_runtime_dir`. Keep it short: a unix socket path holds at most 107 bytes.
    rate_hz:
        Sample rate of the null sinks, Hz (PortAudio streams at other rates are resampled by
        PulseAudio).

    Examples
    --------
    >>> cards = SoundCards("/tmp/demo-cards")        # doctest: +SKIP
    >>> cards.up(["be1", "nl1"])["be1"].input        # doctest: +SKIP
    'brug_be1_in'
    >>> cards.apply_env(); cards.down()              # doctest: +SKIP
    """

    def __init__(self, runtime_dir: str | Path | None = None, rate_hz: int = 48000) -> None:
        self.runtime_dir = Path(runtime_dir) if runtime_dir is not None else default_runtime_dir()
        self.rate_hz = int(rate_hz)
        self._reaper: subprocess.Popen[bytes] | None = None

    # -- paths and environment ------------------------------------------------------------
    @property
    def socket_path(self) -> Path:
        return self.runtime_dir / "pulse" / "native"

    @property
    def asound_path(self) -> Path:
        return self.runtime_dir / "asound.conf"

    @property
    def env_path(self) -> Path:
        return self.runtime_dir / "env"

    @property
    def server(self) -> str:
        """PulseAudio server address (``unix:PATH``)."""
        return f"unix:{self.socket_path}"

    def env(self) -> dict[str, str]:
        """Environment a separate process needs to reach the cards (PortAudio and pactl)."""
        return {
            "PULSE_SERVER": self.server,
            "ALSA_CONFIG_PATH": f"{_system_alsa_conf()}:{self.asound_path}",
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "BRUG_RUNTIME_DIR": str(self.runtime_dir),
        }

    def apply_env(self) -> None:
        """Put :meth:`env` into this process's environment (before PortAudio initialises;
        after new cards appear call :func:`refresh_portaudio`)."""
        os.environ.update(self.env())

    def _pactl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PULSE_SERVER=self.server, XDG_RUNTIME_DIR=str(self.runtime_dir))
        try:
            res = subprocess.run(["pactl", *args], env=env, capture_output=True, text=True,
                                 timeout=10)
        except FileNotFoundError as exc:
            raise SoundCardError("pactl not found: install pulseaudio-utils") from exc
        except subprocess.TimeoutExpired as exc:
            raise SoundCardError(f"pactl {' '.join(args)}: no answer from {self.server}") from exc
        if check and res.returncode != 0:
            raise SoundCardError(f"pactl {' '.join(args)}: {res.stderr.strip() or res.stdout}")
        return res

    # -- server ---------------------------------------------------------------------------
    def running(self) -> bool:
        """True when a server answers on :attr:`socket_path`."""
        if not self.socket_path.exists():
            return False
        return self._pactl("info", check=False).returncode == 0

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server unless one already answers in :attr:`runtime_dir`."""
        if self.running():
            return
        if shutil.which("pulseaudio") is None:
            raise SoundCardError("pulseaudio not found: install the Debian package pulseaudio")
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > 100:
            raise SoundCardError(f"runtime dir too long for a unix socket: {self.runtime_dir}")
        home = self.runtime_dir / "home"
        home.mkdir(exist_ok=True)
        env = dict(os.environ, XDG_RUNTIME_DIR=str(self.runtime_dir), HOME=str(home),
                   XDG_CONFIG_HOME=str(home / ".config"))
        env.pop("PULSE_SERVER", None)
        cmd = ["pulseaudio", "--daemonize=yes", "--system=no", "--exit-idle-time=-1",
               "--disallow-exit", "--disallow-module-loading=no", "-n",
               "--use-pid-file=yes", "--log-target=file:" + str(self.runtime_dir / "pulse.log"),
               "--load=module-native-protocol-unix auth-anonymous=1 socket="
               + str(self.socket_path)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(0.05)
        log = self.runtime_dir / "pulse.log"
        tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise SoundCardError(f"PulseAudio did not start in {self.runtime_dir} "
                             f"(exit {res.returncode}): {res.stderr.strip()} {' | '.join(tail)}")

    def stop_with_this_process(self) -> None:
        """Make the running server stop when this process ends, even by SIGKILL or a crash.

        For a server that only this process uses (a test session, a bench run that started
        it): the cards keep their keep-alive loopbacks rendering, so a server left behind costs
        CPU (15-20 % of a core with five cards) until someone runs ``brug soundcards down``.
        A small watchdog process waits on a pipe from this one and stops the server when the
        pipe closes. :meth:`down` ends the watchdog first. Call after :meth:`start`.
        """
        pid = self._pid()
        if pid is None or self._reaper is not None:
            return
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, str(pid)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def _pid(self) -> int | None:
        pidfile = self.runtime_dir / "pulse" / "pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def down(self, timeout_s: float = 5.0) -> None:
        """Stop the server (all cards go with it) and remove the env file. Idempotent."""
        if self._reaper is not None:
            self._reaper.kill()
            self._reaper.wait()
            if self._reaper.stdin is not None:
                self._reaper.stdin.close()
            self._reaper = None
        pid = self._pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pid = None
        deadline = time.monotonic() + timeout_s
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # the ALSA config stays: a process may still name it in ALSA_CONFIG_PATH (a missing
        # file there breaks every ALSA open); its PCMs just fail to connect now
        self.env_path.unlink(missing_ok=True)

    # -- cards ----------------------------------------------------------------------------
    def _sinks(self) -> dict[str, str]:
        """Sink name -> owning module index, for every sink on the server."""
        out = self._pactl("list", "short", "sinks").stdout
        sinks: dict[str, str] = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 2:
                sinks[parts[1]] = parts[0]
        return sinks

    def _sources(self) -> set[str]:
        out = self._pactl("list", "short", "sources").stdout
        return {p[1] for p in (line.split("\t") for line in out.splitlines()) if len(p) >= 2}

    def _modules(self, sink: str) -> list[str]:
        """Indices of the modules that make or feed ``sink`` (null sink, keep-alive loopback)."""
        out = self._pactl("list", "short", "modules").stdout
        mods: list[str] = []
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3 and re.search(rf"\bsink(_name)?={re.escape(sink)}(\s|$)",
                                             parts[2]):
                mods.append(parts[0])
        return mods

    def cards(self) -> list[str]:
        """Names of the virtual ports present on the server, sorted."""
        names = set()
        sinks = self._sinks()
        for s in sinks:
            m = re.fullmatch(r"brug_(.+)_air", s)
            if m and f"brug_{m.group(1)}_tx" in sinks:
                names.add(m.group(1))
        return sorted(names)

    def up(self, names: list[str] | tuple[str, ...], rate_hz: int | None = None
           ) -> dict[str, CardNames]:
        """Start the server if needed and create the cards for ``names`` (existing ones are
        reused). Writes the ALSA config and the env file; returns name -> :class:`CardNames`."""
        for n in names:
            if not _NAME_RE.match(n):
                raise SoundCardError(f"bad card name {n!r}: use letters, digits, '_' or '-' "
                                     "(at most 32)")
        rate = int(rate_hz or self.rate_hz)
        self.start()
        sinks = self._sinks()
        created = False
        if SILENCE_SOURCE not in self._sources():
            self._pactl("load-module", "module-null-source", f"source_name={SILENCE_SOURCE}",
                        f"rate={rate}", "channels=1", "format=float32le")
            self._pactl("set-default-source", SILENCE_SOURCE)
        if NOWHERE_SINK not in sinks:
            # default sink: where PulseAudio moves streams of a removed card (never a card)
            self._pactl("load-module", "module-null-sink", f"sink_name={NOWHERE_SINK}",
                        f"rate={rate}", "channels=1", "format=float32le")
            self._pactl("set-default-sink", NOWHERE_SINK)
        for n in names:
            c = CardNames(n)
            for sink in (c.rx_sink, c.tx_sink):
                if sink in sinks:
                    continue
                self._pactl("load-module", "module-null-sink", f"sink_name={sink}",
                            f"rate={rate}", "channels=1", "format=float32le",
                            f"sink_properties=device.description={sink}")
                # Keep the sink running with a small block: a null sink without a playing
                # stream renders in 2 s blocks, so its monitor (a capture device) would
                # deliver nothing for up to 2 s and then a burst. A loopback of silence
                # asking for low latency keeps it rendering every few ms; it adds zeros.
                self._pactl("load-module", "module-loopback", f"source={SILENCE_SOURCE}",
                            f"sink={sink}", f"latency_msec={KEEPALIVE_LATENCY_MS}",
                            "source_dont_move=true", "sink_dont_move=true")
                created = True
        self.write_config()
        if created:  # the first block of a new sink (armed at creation) is still 2 s long
            time.sleep(NEW_SINK_SETTLE_S)
        return {n: CardNames(n) for n in names}

    def remove(self, name: str) -> None:
        """Unload the two sinks of one card (its devices vanish: streams on them fail).
        Used to drill device loss; ``up([name])`` brings it back."""
        c = CardNames(name)
        # PulseAudio rescues the streams of an unloaded sink onto the default sink (a silent
        # one here); kill them there, so their ALSA PCMs fail as an unplugged card would.
        streams = self._client_streams(name)
        for sink in (c.rx_sink, c.tx_sink):
            for mod in reversed(self._modules(sink)):
                self._pactl("unload-module", mod, check=False)
        for verb, idx in streams:
            self._pactl(verb, idx, check=False)

    def _client_streams(self, name: str) -> list[tuple[str, str]]:
        """(pactl kill verb, index) of the client streams (not the keep-alives) on a card."""
        c = CardNames(name)
        index = {s: i for s, i in self._sinks().items()}
        srcs = self._pactl("list", "short", "sources").stdout.splitlines()
        src_index = {p[1]: p[0] for p in (line.split("\t") for line in srcs) if len(p) >= 2}
        sinks = {index.get(c.rx_sink), index.get(c.tx_sink)} - {None}
        monitors = {src_index.get(c.rx_sink + ".monitor"),
                    src_index.get(c.tx_sink + ".monitor")} - {None}
        found: list[tuple[str, str]] = []
        for kind, targets in (("sink-inputs", sinks), ("source-outputs", monitors)):
            for line in self._pactl("list", "short", kind).stdout.splitlines():
                p = line.split("\t")
                # columns: index, sink/source index, client index ('-' for modules), driver
                if len(p) >= 3 and p[1] in targets and p[2] != "-":
                    verb = "kill-sink-input" if kind == "sink-inputs" else "kill-source-output"
                    found.append((verb, p[0]))
        return found

    def write_config(self) -> None:
        """Write the ALSA PCMs for every card on the server and the env file."""
        names = self.cards()
        lines = [f"# virtual sound cards of brug on {self.server}; written by brug soundcards"]
        for n in names:
            c = CardNames(n)
            for pcm, dev, desc in ((c.input, c.rx_sink + ".monitor", "gateway capture"),
                                   (c.output, c.tx_sink, "gateway playback"),
                                   (c.air_rx, c.rx_sink, "terminal receives (play)"),
                                   (c.air_tx, c.tx_sink + ".monitor",
                                    "terminal transmits (record)")):
                lines.append(f'pcm.{pcm} {{ type pulse; server "{self.server}"; device "{dev}"; '
                             f'hint {{ show on; description "{pcm}: {desc}" }} }}')
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.asound_path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.asound_path)
        env_tmp = self.env_path.with_suffix(".tmp")
        env_tmp.write_text("".join(f"export {k}={shlex.quote(v)}\n"
                                   for k, v in self.env().items()))
        env_tmp.replace(self.env_path)


def refresh_portaudio() -> None:
    """Re-initialise PortAudio in this process so it lists devices created since it started.

    Any open streams must be closed first (PortAudio terminates them).
    """
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


# -- command line ---------------------------------------------------------------------------
def _cards_from(args: argparse.Namespace) -> SoundCards:
    return SoundCards(args.runtime_dir, rate_hz=getattr(args, "rate", 48000))


def _up(args: argparse.Namespace) -> int:
    cards = _cards_from(args)
    made = cards.up(args.names, rate_hz=args.rate)
    for c in made.values():
        print(f"{c.name}: gateway {c.input} / {c.output}; terminal {c.air_rx} / {c.air_tx}")
    print(f"# environment for other processes (also: brug soundcards env), in {cards.env_path}")
    print(cards.env_path.read_text(), end="")
    return 0


def _down(args: argparse.Namespace) -> int:
    cards = _cards_from(args)
    cards.down()
    print(f"stopped the sound-card server in {cards.runtime_dir}")
    return 0


def _env(args: argparse.Namespace) -> int:
    cards = _cards_from(args)
    if not cards.env_path.exists():
        raise SoundCardError(f"no virtual sound cards in {cards.runtime_dir}: "
                             "run 'brug soundcards up NAME...' first")
    print(cards.env_path.read_text(), end="")
    return 0


def _list(args: argparse.Namespace) -> int:
    cards = _cards_from(args)
    if not cards.running():
        print(f"no sound-card server in {cards.runtime_dir}")
        return 1
    for n in cards.cards():
        c = CardNames(n)
        print(f"{n}: {c.input} {c.output} {c.air_rx} {c.air_tx}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "soundcards", help="virtual sound cards on a private PulseAudio server")
    parser.add_argument("--runtime-dir", default=None,
                        help="server directory (default $BRUG_RUNTIME_DIR, "
                             "$XDG_RUNTIME_DIR/brug or /tmp/brug-$UID)")
    sub = parser.add_subparsers(dest="soundcards_command", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start the server and create cards brug_NAME_{in,out,"
                                   "air_rx,air_tx}")
    up.add_argument("names", nargs="+", metavar="NAME")
    up.add_argument("--rate", type=int, default=48000, help="null-sink rate, Hz")
    up.set_defaults(func=_up)
    down = sub.add_parser("down", help="stop the server and remove all cards")
    down.set_defaults(func=_down)
    env = sub.add_parser("env", help="print the environment (export lines) to reach the cards")
    env.set_defaults(func=_env)
    lst = sub.add_parser("list", help="list the cards on the server")
    lst.set_defaults(func=_list)

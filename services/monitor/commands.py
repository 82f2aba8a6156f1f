"""`recpilot monitor status`, `recpilot monitor actions --enable|--disable|--status` and
`recpilot report drift`. Light to import (the report imports numpy/matplotlib when it runs).

``monitor status`` reads the running monitor's ``GET /status`` (JSON: ``detectors`` from the
engine, ``channels`` from the dispatcher, ``actions`` from the actuator's history,
``actions_enabled``, ``malformed``, ``processed``) and prints what each detector sees, what fired
and what was done (``--json``: the document as served). ``monitor actions`` turns the monitor's
actions off and on at run time with a file under its state dir (it survives restarts; the monitor
reads it before every action).
"""

from __future__ import annotations

import argparse
import json
import time

from recpilot.errors import Unavailable


def _iso(ms) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000)) if ms else "-"


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _labels(d) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((d or {}).items()))


def status_url(settings=None, platform=None) -> str:
    """``http://<monitor host>:<RECPILOT_MONITOR_HTTP_PORT>/status``; a wildcard bind address is
    asked on the loopback."""
    from recpilot.settings import PlatformSettings, load

    from services.monitor.settings import MonitorSettings

    settings = settings or load(MonitorSettings)
    host = settings.http_host or (platform or load(PlatformSettings)).bind_host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}/status"


def fetch_status(url: str, timeout: float = 5.0) -> dict:
    """The monitor's /status document; :class:`Unavailable` with one line when it does not answer."""
    from recpilot.stack.process import http_get

    code, body = http_get(url, timeout)
    if code == 0:
        raise Unavailable(f"the monitor is not running (nothing answers at {url}; start it with `recpilot up` "
                          "or `python -m services.monitor`)")
    if code != 200:
        raise Unavailable(f"the monitor answered {code} at {url}: {body.strip()[:200]}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise Unavailable(f"the monitor's {url} did not answer JSON: {body.strip()[:200]}") from None
    if not isinstance(doc, dict):
        raise Unavailable(f"the monitor's {url} answered {type(doc).__name__}, not a JSON object")
    return doc


def _detector_lines(name: str, det) -> list[str]:
    """What one detector's status says, in a few lines; tolerant of the engine's exact shape (a
    dict per detector with e.g. keys/statistic/threshold/streak/firing/hints)."""
    if not isinstance(det, dict):
        return [f"  {name}: {_num(det)}"]
    firing = det.get("firing") or []
    enabled = det.get("enabled", True)
    head = f"  {name}" + ("" if enabled else " (disabled)")
    parts = []
    for k in ("statistic", "last", "value", "threshold", "streak", "breaching", "windows", "keys"):
        if k in det and not isinstance(det[k], (dict, list)):
            parts.append(f"{k} {_num(det[k])}")
    keys = det.get("keys")
    if isinstance(keys, (list, dict)):
        parts.append(f"{len(keys)} keys")
    parts.append(f"{len(firing)} firing" if isinstance(firing, list) else f"firing {_num(firing)}")
    lines = [head + ": " + ", ".join(parts)]
    if isinstance(keys, dict):  # key -> its last window
        worst = []
        for key, kv in keys.items():
            if isinstance(kv, dict):
                worst.append((kv.get("streak", 0) or 0, key, kv))
        for _streak, key, kv in sorted(worst, key=lambda t: (-(t[0] or 0), str(t[1])))[:5]:
            shown = ", ".join(f"{k} {_num(v)}" for k, v in kv.items() if not isinstance(v, (dict, list)))
            lines.append(f"    {key}: {shown}")
    if isinstance(keys, list):  # the engine's shape: one entry per label set, with its last verdict
        def rank(k):
            return (not k.get("firing"), -(k.get("breach_streak") or 0), _labels(k.get("labels")))

        for k in sorted((k for k in keys if isinstance(k, dict)), key=rank)[:5]:
            last = k.get("last") or {}
            if last.get("breach") is None:
                verdict = f"no verdict ({last.get('reason', 'no window closed yet')})"
            else:
                verdict = (f"{last.get('statistic', '')} {_num(last.get('value'))} (threshold {_num(last.get('threshold'))}), "
                           f"{'breaching' if last.get('breach') else 'clean'}")
            lines.append(f"    {_labels(k.get('labels'))}: {verdict}; streaks breach {k.get('breach_streak', 0)} "
                         f"clean {k.get('clean_streak', 0)}")
    for a in firing if isinstance(firing, list) else []:
        if isinstance(a, dict):
            lines.append(f"    FIRING {a.get('name', name)}{{{_labels(a.get('labels'))}}} "
                         f"{a.get('statistic', '')} {_num(a.get('value'))} > {_num(a.get('threshold'))} "
                         f"since {_iso(a.get('starts_ms'))}")
        else:
            lines.append(f"    FIRING {a}")
    for h in det.get("hints") or []:
        lines.append(f"    hint: {h}")
    return lines


def format_status(doc: dict) -> str:
    """The /status document as a readable summary."""
    out = [f"monitor: {_num(doc.get('processed', 0))} events processed, {_num(doc.get('malformed', 0))} malformed "
           f"skipped; actions {'enabled' if doc.get('actions_enabled') else 'DISABLED'}"]
    detectors = doc.get("detectors") or {}
    firing_total = 0
    out.append("detectors:")
    if isinstance(detectors, dict):
        for name in sorted(detectors):
            det = detectors[name]
            if isinstance(det, dict) and isinstance(det.get("firing"), list):
                firing_total += len(det["firing"])
            out.extend(_detector_lines(name, det))
    if not detectors:
        out.append("  (none reported)")
    out.append(f"firing alerts: {firing_total}")
    hints = doc.get("hints") or []
    if hints:
        out.append("provisioning hints:")
        out.extend(f"  {h.get('service', '?')} {h.get('instance', '')}: {h.get('hint', '')}" for h in hints)
    channels = doc.get("channels") or {}
    out.append("channels:")
    for name in sorted(channels):
        c = channels[name] or {}
        state = "up" if c.get("up", True) else "DOWN"
        line = (f"  {name}: {state}, delivered {_num(c.get('delivered', 0))}, failures {_num(c.get('failures', 0))}, "
                f"queued {_num(c.get('queued', 0))}, dropped {_num(c.get('dropped', 0))}")
        if c.get("last_error"):
            line += f"; last error: {c['last_error']}"
        out.append(line)
    if not channels:
        out.append("  (none configured)")
    actions = doc.get("actions") or []
    out.append(f"actions: {len(actions)} recorded" + ("; the last 10:" if len(actions) > 10 else ""))
    for a in actions[-10:]:
        line = (f"  {_iso(a.get('timestamp_ms'))} {a.get('action', '?')} {a.get('model_name', '')}"
                f"{'/' + a['version'] if a.get('version') else ''}: {str(a.get('outcome', '?')).upper()} "
                f"(alert {a.get('alert_name', '?')})")
        if a.get("detail"):
            line += f" - {a['detail']}"
        if a.get("command_id"):
            line += f" [command {a['command_id']}]"
        out.append(line)
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    doc = fetch_status(args.url or status_url(), args.timeout)
    print(json.dumps(doc, indent=2) if args.json else format_status(doc))
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    from recpilot.settings import load

    from services.monitor import actions as act
    from services.monitor.settings import MonitorSettings

    settings = load(MonitorSettings)
    directory = args.state_dir or act.state_dir(settings)
    if args.disable:
        rec = act.disable(directory, reason=args.reason or "")
        print(f"monitor actions disabled by {rec['by']} (kill file {act.kill_file(directory)}; "
              "`recpilot monitor actions --enable` turns them back on)")
        return 0
    if args.enable:
        had = act.enable(directory)
        print("monitor actions enabled" + ("" if had else " (they were not disabled at run time)")
              + ("" if settings.actions_enabled else "; note: RECPILOT_MONITOR_ACTIONS_ENABLED=false still "
                 "disables them"))
        return 0
    rec = act.kill_switch(directory)
    if rec is not None:
        why = f"; reason: {rec['reason']}" if rec.get("reason") else ""
        print(f"monitor actions DISABLED at run time by {rec.get('by', '?')} at {_iso(rec.get('disabled_ms'))}{why} "
              f"({act.kill_file(directory)})")
    elif not settings.actions_enabled:
        print("monitor actions DISABLED by RECPILOT_MONITOR_ACTIONS_ENABLED=false")
    else:
        print("monitor actions enabled")
    return 0


def cmd_report_drift(args: argparse.Namespace) -> int:
    from recpilot.kafka import quiet_client_logs
    from recpilot.models.repository import ModelRepository
    from recpilot.settings import PlatformSettings, load

    from services.monitor.report import drift_report

    quiet_client_logs()
    quiet_client_logs("recpilot.deployments.kafka")
    platform = load(PlatformSettings)
    repo = ModelRepository(args.repository or platform.model_repo)
    page, rows, current, version = drift_report(platform, repo, args.model, args.version, args.minutes,
                                                topic=args.topic, control_topic=args.control_topic,
                                                timeout=args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page)
    drifted = [r.feature for r in rows if r.verdict == "drift"]
    print(f"{args.model}/{version}: {current.events} events over the last {args.minutes:g} min; "
          f"{len(drifted)} of {len(rows)} drifted" + (f" ({', '.join(drifted)})" if drifted else "")
          + f" -> {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    mp = sub.add_parser("monitor", help="the monitor: what the detectors see, what fired, what was done; its actions")
    ms = mp.add_subparsers(dest="monitor_command", metavar="ACTION")
    mp.set_defaults(func=lambda a: (mp.print_help(), 2)[1])
    p = ms.add_parser("status", help="what each detector sees now, the firing alerts, the channels and the actions taken")
    p.add_argument("--json", action="store_true", help="print the monitor's /status document as served")
    p.add_argument("--url", help="the monitor's status URL (default: http://<RECPILOT_MONITOR_HTTP_HOST or "
                   "RECPILOT_BIND_HOST>:<RECPILOT_MONITOR_HTTP_PORT>/status)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the monitor")
    p.set_defaults(func=cmd_status)
    a = ms.add_parser("actions", help="turn the monitor's automatic actions off or on (survives restarts)")
    g = a.add_mutually_exclusive_group()
    g.add_argument("--disable", action="store_true", help="no rollback, canary abort, policy pause or retrain until --enable")
    g.add_argument("--enable", action="store_true", help="remove the run-time kill switch")
    g.add_argument("--status", action="store_true", help="say whether actions are enabled (the default)")
    a.add_argument("--reason", help="recorded with --disable")
    a.add_argument("--state-dir", type=Path, help="the monitor's state dir (default: RECPILOT_MONITOR_STATE_DIR or "
                   "<home>/monitor)")
    a.set_defaults(func=cmd_actions)

    rp = sub.add_parser("report", help="reports: drift of a served model version against its training reference")
    rs = rp.add_subparsers(dest="report_command", metavar="REPORT")
    rp.set_defaults(func=lambda a: (rp.print_help(), 2)[1])
    d = rs.add_parser("drift", help="per feature: reference vs current histograms, PSI / JS / Wasserstein, verdict (HTML)")
    d.add_argument("--model", required=True, help="the model (its production version unless --version)")
    d.add_argument("--version", help="the version to report on (default: production, from the deployment control)")
    d.add_argument("--minutes", type=float, default=15.0, help="the window: the last M minutes (default 15)")
    d.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    d.add_argument("--repository", help="model repository (default: RECPILOT_MODEL_REPOSITORY or <home>/models)")
    d.add_argument("--topic", help="the metrics topic (default: metrics.inference)")
    d.add_argument("--control-topic", help="the deployment control topic (default: RECPILOT_DEPLOY_TOPIC)")
    d.add_argument("--timeout", type=float, default=60.0, help="seconds to read Kafka")
    d.set_defaults(func=cmd_report_drift)

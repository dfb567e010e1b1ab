"""Whether the Hugging Face hub can be reached, decided once per process: with HF_HUB_OFFLINE set nothing is
asked; otherwise one short request (name resolution included) decides, and a hub that does not answer switches
huggingface_hub to offline mode for the rest of the run, said once, instead of 90 s of retries per download."""

from __future__ import annotations

import logging

log = logging.getLogger("ltcompress")
PROBE_TIMEOUT_S = 3.0  # one short request decides whether the hub is there (DNS included), not 90 s of retries
_probed: dict[str, str | None] = {}  # endpoint -> why it is unreachable (None: it answered), once per process


def offline_reason(probe: bool = True) -> str | None:
    """Why this run works offline: HF_HUB_OFFLINE, or (with `probe`) a hub that did not answer the one short
    request of this process, which then switches huggingface_hub to offline mode for the rest of the run
    (cached weights load without the network). None when online."""
    from huggingface_hub import constants

    url = endpoint()
    if constants.HF_HUB_OFFLINE:
        return "the hub did not answer" if _probed.get(url) else "HF_HUB_OFFLINE is set"
    if not probe:
        return None
    if url not in _probed:
        _probed[url] = _probe(url)
        if _probed[url] is not None:
            constants.HF_HUB_OFFLINE = True
            log.warning(
                "the Hugging Face hub %s did not answer within %g s (%s): working offline for this run, with "
                "the weights in the Hugging Face cache only (set HF_HUB_OFFLINE=1 to skip this check)",
                url,
                PROBE_TIMEOUT_S,
                _probed[url],
            )
    return "the hub did not answer" if _probed[url] else None


def _probe(endpoint: str) -> str | None:
    """Why `endpoint` cannot be reached, or None when it answers anything at all (an HTTP error is an answer).
    The request runs in a thread bounded by PROBE_TIMEOUT_S, since name resolution ignores socket timeouts."""
    import threading
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)
        except Exception as exc:  # noqa: BLE001 - URLError, OSError, ValueError: all mean "not reachable"
            outcome.append(f"{type(exc).__name__}: {str(exc).strip() or 'no answer'}"[:200])

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S + 0.5)
    return outcome[0] if outcome else f"no answer in {PROBE_TIMEOUT_S:g} s"


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT

"""A small client of OpenAI-compatible chat completions: timeouts, retries with backoff, a key.

Written on the standard library (``urllib``): one POST per request is all the judge needs, and
it keeps the toolkit free of an HTTP client dependency. ``base_url`` is the server's base URL as
OpenAI clients take it (``http://host:8000/v1`` for vLLM or TGI); requests go to
``{base_url}/chat/completions``. The key, if any, is sent as a bearer token and appears in no
message, repr or file.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from aligner.errors import UserError

MAX_RETRY_AFTER = 60.0
"""Most seconds a server's Retry-After makes a request wait."""


class ChatRequestError(UserError):
    """A request the server refuses for good (a bad key, model or body): the run stops."""


class ChatUnavailable(RuntimeError):
    """No reply after every retry: the server kept failing, timing out or sending garbage."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def check_base_url(url: str) -> str:
    """The URL without a trailing slash; one with credentials in it is refused."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"--judge_url {url!r}: give the server's base URL, http(s)://host:port/v1")
    if parts.username or parts.password:
        raise ValueError(
            "--judge_url must not hold credentials; give the key by --judge_api_key_env"
        )
    return url.rstrip("/")


def retry_after(headers: http.client.HTTPMessage | None) -> float | None:
    """The seconds a 429 or 503 asks the client to wait, capped; None if it names none."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


@dataclass(frozen=True)
class ChatClient:
    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0
    """Seconds a request waits to connect and for each read from the server."""
    retries: int = 5
    """Retries after a 429, a 5xx, a timeout, a dropped connection or a malformed reply."""
    backoff: float = 1.0
    """Seconds before the first retry; doubled for each further one, with jitter."""
    max_tokens: int = 1024
    temperature: float = 0.0

    @property
    def endpoint(self) -> str:
        return self.base_url + "/chat/completions"

    def redact(self, text: str) -> str:
        return text.replace(self.api_key, "***") if self.api_key else text

    def complete(self, prompt: str) -> str:
        """The reply to one user message; retried as documented, else ``ChatUnavailable``."""
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                return self._post(data)
            except _Retry as problem:
                reason = self.redact(str(problem))
                if attempt == self.retries:
                    break
                delay = self.backoff * 2**attempt * random.uniform(0.5, 1.0)
                time.sleep(max(delay, problem.retry_after or 0.0))
        raise ChatUnavailable(
            f"{self.endpoint}: no reply after {self.retries + 1} tries ({reason})"
        )

    def _post(self, data: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 429 or error.code >= 500:
                raise _Retry(f"HTTP {error.code}", retry_after(error.headers)) from None
            detail = error.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
            raise ChatRequestError(
                self.redact(f"{self.endpoint}: HTTP {error.code} {error.reason}: {detail}")
            ) from None
        except (OSError, http.client.HTTPException) as error:
            # URLError (refused, unreachable), timeouts and dropped connections are OSErrors.
            raise _Retry(f"{type(error).__name__}: {error}") from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry("a reply that is not a chat completion") from None
        return content if isinstance(content, str) else ""

"""A simulated, fully offline image registry for the fake runtime.

``PullImage`` never touches a network: ``Registry.resolve`` turns a reference
into an ``ImageRecord`` from a small built-in catalog (busybox, alpine, nginx,
pause and the two ``localhost/crilab`` images the real-containerd test setup
imports), or synthesizes one deterministically, so the same reference always
gives the same image ID, digest and size. References are normalized the way
containerd does (docker's reference grammar), with errors that say which rule
was broken and how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from crilab.stubs import api_pb2

from .errors import InvalidArgument, NotFound

__all__ = [
    "CATALOG",
    "DOCKER_HUB",
    "ImageRecord",
    "Reference",
    "Registry",
    "build_image",
    "is_image_id",
    "normalize",
    "parse_reference",
]

DOCKER_HUB = "docker.io"
_LEGACY_HUBS = frozenset({"index.docker.io", "registry-1.docker.io"})
_MAX_NAME = 255  # docker's NameTotalLengthMax
_MAX_TAG = 128
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_HEX64 = re.compile(r"[a-f0-9]{64}")
_IMAGE_ID = re.compile(r"(?:sha256:)?[a-f0-9]{64}")


def _bad(reference: str, rule: str, hint: str) -> InvalidArgument:
    return InvalidArgument(f"invalid image reference {json.dumps(reference)}: {rule}; {hint}")


def is_image_id(text: str) -> bool:
    """True for ``sha256:<64 hex>`` or bare 64 hex: an image ID, which no registry serves."""
    return bool(_IMAGE_ID.fullmatch(text))


@dataclass(frozen=True)
class Reference:
    """A parsed, normalized reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The repository, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar(self) -> str:
        """The short form docker prints, e.g. ``busybox:latest``."""
        name = self.name
        if self.domain == DOCKER_HUB:
            short = self.path.removeprefix("library/")
            name = short if "/" not in short else self.path
        return name + self._suffix()

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.name + self._suffix()


def _split_digest(reference: str) -> tuple[str, str | None]:
    if "@" not in reference:
        return reference, None
    name, _, digest = reference.partition("@")
    algorithm, _, hexpart = digest.partition(":")
    if "@" in digest:
        raise _bad(reference, "a reference holds at most one '@'", "write name@sha256:<hex>")
    if algorithm != "sha256" or not _HEX64.fullmatch(hexpart):
        raise _bad(
            reference,
            f"the digest {json.dumps(digest)} is not 'sha256:' followed by 64 lowercase "
            "hex characters",
            "copy the digest exactly as ListImages or ImageStatus shows it, or pull by tag",
        )
    return name, digest


def _split_tag(reference: str, rest: str) -> tuple[str, str | None]:
    name, colon, tag = rest.rpartition(":")
    if not colon or "/" in tag:
        return rest, None  # no ':' after the last '/': the ':' (if any) belongs to a port
    if not tag:
        raise _bad(reference, "the tag after ':' is empty", "write a tag such as ':latest'")
    if len(tag) > _MAX_TAG:
        raise _bad(reference, f"tags are at most {_MAX_TAG} characters", "shorten the tag")
    if not _TAG.fullmatch(tag):
        raise _bad(
            reference,
            f"the tag {json.dumps(tag)} may hold only letters, digits, '_', '.' and '-' "
            "and must not start with '.' or '-'",
            "fix the tag, e.g. ':1.36'",
        )
    return name, tag


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's rule: the first component is a host if it has '.' or ':' or is localhost."""
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return (DOCKER_HUB if first in _LEGACY_HUBS else first), remainder
    return DOCKER_HUB, name


def _check_name(reference: str, domain: str, path: str) -> str:
    """Validate host and path; returns the path with docker's implied ``library/``."""
    if not _DOMAIN.fullmatch(domain):
        raise _bad(
            reference,
            f"the registry host {json.dumps(domain)} is not a valid host name[:port]",
            "write a host such as 'quay.io' or 'localhost:5000'",
        )
    for component in path.split("/"):
        if not component:
            raise _bad(reference, "the name has an empty path component", "remove the extra '/'")
        if any("A" <= c <= "Z" for c in component):
            hint = f"write {json.dumps(path.lower())}"
            raise _bad(reference, "repository names must be lowercase", hint)
        if not _PATH_COMPONENT.fullmatch(component):
            raise _bad(
                reference,
                f"the path component {json.dumps(component)} may hold only lowercase letters "
                "and digits joined by '.', '_', '__' or '-'",
                "remove the other characters",
            )
    if domain == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"  # official images live under library/
    if len(f"{domain}/{path}") > _MAX_NAME:
        raise _bad(reference, f"repository names are at most {_MAX_NAME} characters", "shorten")
    return path


def parse_reference(reference: str) -> Reference:
    """Parse and normalize; adds ``docker.io``, ``library/`` and ``:latest`` where implied."""
    if not isinstance(reference, str):
        raise InvalidArgument(f"an image reference is a string, not {type(reference).__name__}")
    if not reference.strip():
        raise InvalidArgument(
            f"image reference {json.dumps(reference)} is empty: name an image such as "
            "'busybox' or 'docker.io/library/busybox:1.36'"
        )
    if any(c.isspace() for c in reference):
        raise _bad(reference, "references must not contain whitespace", "remove the spaces")
    if is_image_id(reference):
        raise _bad(
            reference,
            "this is an image ID, not a name a registry knows",
            "pull by name (e.g. busybox:1.36); use ImageStatus for images already pulled",
        )
    rest, digest = _split_digest(reference)
    name, tag = _split_tag(reference, rest)
    if not name:
        raise _bad(reference, "the repository name is empty", "start with a name like 'busybox'")
    domain, path = _split_domain(name)
    path = _check_name(reference, domain, path)
    return Reference(domain, path, tag if tag or digest else "latest", digest)


def normalize(reference: str) -> str:
    """The full name containerd stores; with a digest the tag is dropped, as containerd does."""
    ref = parse_reference(reference)
    return str(replace(ref, tag=None) if ref.digest else ref)


def _sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ImageRecord:
    """One image: identity, size, config, and the /etc/os-release the simulated `cat` prints."""

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    created: str
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str = ""
    os_release: str = ""  # text of /etc/os-release; "" means the image has none
    layers: tuple[str, ...] = ()  # rootfs diff_ids
    pinned: bool = False
    os: str = "linux"
    architecture: str = "amd64"

    @property
    def uid(self) -> int | None:
        """The user containers run as: numeric -> that uid, unset -> 0 (root), a name -> None."""
        user = self.user.split(":")[0]
        if not user:
            return 0
        return int(user) if user.isascii() and user.isdigit() else None

    @property
    def username(self) -> str:
        """The user name when the image names its user rather than numbering it."""
        return self.user.split(":")[0] if self.uid is None else ""

    def merged(self, other: ImageRecord) -> ImageRecord:
        """This image with ``other``'s tags and digests too: a second pull of the same ID adds
        its names, as in containerd (``busybox`` then ``busybox:1.36`` -> one image, two tags)."""
        if other.id != self.id:
            raise InvalidArgument(f"cannot merge image {other.id} into a different image {self.id}")
        return replace(
            self,
            repo_tags=tuple(dict.fromkeys((*self.repo_tags, *other.repo_tags))),
            repo_digests=tuple(dict.fromkeys((*self.repo_digests, *other.repo_digests))),
        )

    def to_proto(self) -> api_pb2.Image:
        """The CRI ``Image``; like containerd, ``uid`` stays unset when the image sets no user."""
        image = api_pb2.Image(
            id=self.id,
            repo_tags=self.repo_tags,
            repo_digests=self.repo_digests,
            size=self.size,
            username=self.username,
            spec=api_pb2.ImageSpec(image=self.id),
            pinned=self.pinned,
        )
        if self.user and self.uid is not None:
            image.uid.value = self.uid
        return image

    def config_json(self) -> dict[str, Any]:
        """An OCI image config (empty fields omitted, as docker does); its sha256 is the ID."""
        config = {
            "User": self.user,
            "Env": list(self.env),
            "Entrypoint": list(self.entrypoint),
            "Cmd": list(self.cmd),
            "WorkingDir": self.working_dir,
            "ExposedPorts": {port: {} for port in self.exposed_ports},
            "Labels": dict(self.labels),
            "StopSignal": self.stop_signal,
        }
        return {
            "architecture": self.architecture,
            "os": self.os,
            "created": self.created,
            "config": {key: value for key, value in config.items() if value},
            "rootfs": {"type": "layers", "diff_ids": list(self.layers)},
        }


def _manifest_digest(record: ImageRecord) -> str:
    """The digest of a (simulated) OCI manifest pointing at the config and one layer."""
    layers = [{"digest": _sha256_text(f"{d}+gzip"), "size": record.size} for d in record.layers]
    return _sha256_json({"schemaVersion": 2, "config": {"digest": record.id}, "layers": layers})


def _identify(record: ImageRecord, seed: str, imported: bool) -> ImageRecord:
    """Fill layers, ID and repo digests from the content, the way content addressing does."""
    record = replace(record, layers=(_sha256_text(f"layer:{seed}"),))
    record = replace(record, id=_sha256_json(record.config_json()))
    if imported:  # built or imported locally, never pulled: containerd records no repo digest
        return replace(record, repo_digests=())
    digest = _manifest_digest(record)
    names = dict.fromkeys(parse_reference(tag).name for tag in record.repo_tags)
    return replace(record, repo_digests=tuple(f"{name}@{digest}" for name in names))


_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SYNTHETIC_CREATED = "2024-01-01T00:00:00Z"


def build_image(
    tags: Sequence[str],
    *,
    size: int,
    created: str = _SYNTHETIC_CREATED,
    user: str = "",
    entrypoint: Sequence[str] = (),
    cmd: Sequence[str] = (),
    env: Sequence[str] = (_PATH_ENV,),
    working_dir: str = "",
    exposed_ports: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    stop_signal: str = "",
    os_release: str = "",
    pinned: bool = False,
    imported: bool = False,
) -> ImageRecord:
    """A catalog image whose ID and digests are computed from its content, never typed in."""
    refs = [parse_reference(tag) for tag in tags]
    if not refs or any(ref.digest for ref in refs):
        raise InvalidArgument(f"build_image needs one or more tags without digests, got {tags!r}")
    record = ImageRecord(
        id="",
        repo_tags=tuple(str(ref) for ref in refs),
        repo_digests=(),
        size=size,
        created=created,
        user=user,
        entrypoint=tuple(entrypoint),
        cmd=tuple(cmd),
        env=tuple(env),
        working_dir=working_dir,
        exposed_ports=tuple(exposed_ports),
        labels=tuple(sorted((labels or {}).items())),
        stop_signal=stop_signal,
        os_release=os_release,
        pinned=pinned,
    )
    return _identify(record, str(refs[0]), imported)


def _os_release(**fields: str) -> str:
    return "".join(f"{key}={value}\n" for key, value in fields.items())


# The real busybox image ships no /etc/os-release; the fake shows a BusyBox-style one.
_BUSYBOX_RELEASE = _os_release(
    NAME='"BusyBox"', ID="busybox", VERSION_ID="1.36.1", PRETTY_NAME='"BusyBox v1.36.1"'
)


def _alpine_release(version: str) -> str:
    return _os_release(
        NAME='"Alpine Linux"',
        ID="alpine",
        VERSION_ID=version,
        PRETTY_NAME=f'"Alpine Linux v{version.rsplit(".", 1)[0]}"',
        HOME_URL='"https://alpinelinux.org/"',
        BUG_REPORT_URL='"https://gitlab.alpinelinux.org/alpine/aports/-/issues"',
    )


_DEBIAN_RELEASE = _os_release(
    PRETTY_NAME='"Debian GNU/Linux 12 (bookworm)"',
    NAME='"Debian GNU/Linux"',
    VERSION_ID='"12"',
    VERSION='"12 (bookworm)"',
    VERSION_CODENAME="bookworm",
    ID="debian",
    HOME_URL='"https://www.debian.org/"',
    SUPPORT_URL='"https://www.debian.org/support"',
    BUG_REPORT_URL='"https://bugs.debian.org/"',
)
_NGINX = {
    "entrypoint": ["/docker-entrypoint.sh"],
    "cmd": ["nginx", "-g", "daemon off;"],
    "exposed_ports": ["80/tcp"],
    "labels": {"maintainer": "NGINX Docker Maintainers <docker-maint@nginx.com>"},
    "stop_signal": "SIGQUIT",
    "created": "2024-11-26T18:42:08Z",
}
_NGINX_ENV = [_PATH_ENV, "NGINX_VERSION=1.27.3", "NJS_VERSION=0.8.7"]
_PAUSE = {"user": "65535", "entrypoint": ["/pause"], "working_dir": "/", "pinned": True}
# Built locally by the test setup (a real containerd has them too); never pushed anywhere.
_LOCAL = {"created": "2025-01-01T00:00:00Z", "os_release": _BUSYBOX_RELEASE, "imported": True}

# A snapshot of late 2024 (latest = busybox 1.36.1, alpine 3.20, nginx 1.27). Sizes are bytes.
CATALOG: tuple[ImageRecord, ...] = (
    build_image(
        ["busybox:1.36.1", "busybox:1.36", "busybox:latest"],
        size=4_269_811,
        created="2024-09-26T21:31:42Z",
        cmd=["sh"],
        os_release=_BUSYBOX_RELEASE,
    ),
    build_image(
        ["alpine:3.20", "alpine:latest"],
        size=7_797_760,
        created="2024-09-06T22:20:07Z",
        cmd=["/bin/sh"],
        os_release=_alpine_release("3.20.3"),
    ),
    build_image(
        ["alpine:3.19"],
        size=7_384_064,
        created="2024-09-06T22:20:04Z",
        cmd=["/bin/sh"],
        os_release=_alpine_release("3.19.4"),
    ),
    build_image(
        ["nginx:1.27", "nginx:latest"],
        size=191_670_156,
        env=[*_NGINX_ENV, "NJS_RELEASE=1~bookworm", "PKG_RELEASE=1~bookworm"],
        os_release=_DEBIAN_RELEASE,
        **_NGINX,
    ),
    build_image(
        ["nginx:alpine"],
        size=47_983_121,
        env=[*_NGINX_ENV, "NJS_RELEASE=1", "PKG_RELEASE=1"],
        os_release=_alpine_release("3.20.3"),
        **_NGINX,
    ),
    build_image(["registry.k8s.io/pause:3.9"], size=744_245, **_PAUSE),
    build_image(["registry.k8s.io/pause:3.10"], size=736_228, **_PAUSE),
    build_image(["localhost/crilab/busybox:local"], size=4_496_053, cmd=["sh"], **_LOCAL),
    build_image(
        ["localhost/crilab/pause:local"],
        size=4_496_061,
        entrypoint=["/bin/sleep", "2147483647"],
        pinned=True,
        **_LOCAL,
    ),
)

# What a synthesized image looks like when its repository is not in the catalog.
_DEFAULT_TEMPLATE = build_image(
    ["crilab/synthetic"], size=0, cmd=["sh"], os_release=_alpine_release("3.20.3")
)


def _refuse_unreachable(ref: Reference) -> None:
    """Hosts under .invalid never exist (RFC 2606): fail like a registry answering 404."""
    host = ref.domain.split(":")[0].lower()
    if host == "invalid" or host.endswith(".invalid"):
        raise NotFound(
            f'failed to resolve reference "{ref}": {ref}: not found. The host {host} is under '
            "the reserved .invalid top-level domain, which never exists: pull a real name "
            "such as busybox or docker.io/library/nginx:1.27 instead"
        )


class Registry:
    """Resolves references offline: catalog first, else a deterministic synthesized image."""

    def __init__(self, extra: Iterable[ImageRecord] = (), *, builtin: bool = True) -> None:
        self._by_tag: dict[str, ImageRecord] = {}  # "domain/path:tag" -> image
        self._by_digest: dict[str, ImageRecord] = {}  # "domain/path@sha256:..." -> image
        self._by_name: dict[str, ImageRecord] = {}  # "domain/path" -> a look-alike template
        for record in (*(CATALOG if builtin else ()), *extra):
            self.add(record)

    def add(self, record: ImageRecord) -> None:
        """Publish an image under all its tags and digests (later additions win)."""
        for tag in record.repo_tags:
            self._by_tag[tag] = record
            ref = parse_reference(tag)
            if ref.tag == "latest" or ref.name not in self._by_name:
                self._by_name[ref.name] = record  # new tags of this repository look like it
        for digest in record.repo_digests:
            self._by_digest[digest] = record

    def images(self) -> list[ImageRecord]:
        """The catalog, one record per image ID, with all the tags it is known by."""
        return list({record.id: record for record in self._by_tag.values()}.values())

    def resolve(self, reference: str) -> ImageRecord:
        """The image a pull of ``reference`` gets; repo_tags/digests are what that pull records."""
        ref = parse_reference(reference)
        _refuse_unreachable(ref)
        if ref.digest:
            key = f"{ref.name}@{ref.digest}"
            record = self._by_digest.get(key) or self._synthesize(ref, key)
            return replace(record, repo_tags=(), repo_digests=(key,))
        key = f"{ref.name}:{ref.tag}"
        record = self._by_tag.get(key) or self._synthesize(ref, key)
        digests = tuple(d for d in record.repo_digests if d.startswith(f"{ref.name}@"))
        return replace(record, repo_tags=(key,), repo_digests=digests)

    def _synthesize(self, ref: Reference, key: str) -> ImageRecord:
        """Same reference -> same image; a catalog repository's new tag keeps its look."""
        seed = hashlib.sha256(key.encode()).digest()
        template = self._by_name.get(ref.name)
        if template is not None:  # e.g. busybox:1.37: busybox-like, size within +/-10%
            size = template.size * (900 + seed[0] * 200 // 255) // 1000
        else:  # 5 MB to 200 MB
            size = 5_000_000 + int.from_bytes(seed[:4]) % 195_000_001
        record = replace(
            template or _DEFAULT_TEMPLATE,
            repo_tags=() if ref.digest else (key,),
            size=size,
            created=_SYNTHETIC_CREATED,
            pinned=False,
        )
        record = _identify(record, key, imported=False)
        if ref.digest:  # the registry serves exactly the manifest that was asked for
            return replace(record, repo_digests=(key,))
        for digest in record.repo_digests:  # so a later pull by this digest finds the same image
            self._by_digest.setdefault(digest, record)
        return record

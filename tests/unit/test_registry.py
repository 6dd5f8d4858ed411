"""The offline image registry: reference normalization, catalog, synthesis, protos."""

from __future__ import annotations

import re
import string
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crilab.runtime.errors import InvalidArgument, NotFound
from crilab.runtime.registry import (
    CATALOG,
    ImageRecord,
    Reference,
    Registry,
    build_image,
    is_image_id,
    normalize,
    parse_reference,
)
from crilab.stubs import api_pb2

HEX = "0123456789abcdef" * 4
DIGEST = f"sha256:{HEX}"
SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
MB = 1_000_000


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.mark.parametrize(
    ("given_ref", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
        ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("user/app/sub:v1", "docker.io/user/app/sub:v1"),
        ("quay.io/x/y", "quay.io/x/y:latest"),
        ("quay.io/y", "quay.io/y:latest"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        ("localhost/crilab/busybox:local", "localhost/crilab/busybox:local"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("my-host:5000/team/app:1", "my-host:5000/team/app:1"),
        ("localhost", "docker.io/library/localhost:latest"),
        ("ghcr.io/acme/tool:v2", "ghcr.io/acme/tool:v2"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        ("a_b__c-d--e.f:TAG_1.2-x", "docker.io/library/a_b__c-d--e.f:TAG_1.2-x"),
        ("busybox:" + "t" * 128, "docker.io/library/busybox:" + "t" * 128),
    ],
)
def test_normalize_valid(given_ref: str, expected: str) -> None:
    assert normalize(given_ref) == expected
    assert normalize(expected) == expected


@pytest.mark.parametrize(
    ("given_ref", "rule"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("busy box", "whitespace"),
        (" busybox", "whitespace"),
        ("Busybox", "must be lowercase"),
        ("user/MyApp:1", "must be lowercase"),
        ("quay.io/X/y", "must be lowercase"),
        ("busybox:", "tag after ':' is empty"),
        ("busybox:" + "t" * 129, "at most 128 characters"),
        ("busybox:-x", "may hold only letters"),
        ("busybox:a+b", "may hold only letters"),
        ("busybox@sha256:abc", "64 lowercase hex"),
        (f"busybox@sha256:{HEX.upper()}", "64 lowercase hex"),
        (f"busybox@md5:{HEX}", "64 lowercase hex"),
        ("busybox@", "64 lowercase hex"),
        (f"busybox@{DIGEST}@{DIGEST}", "at most one '@'"),
        (":1.36", "repository name is empty"),
        (f"@{DIGEST}", "repository name is empty"),
        ("user//app", "empty path component"),
        ("user/app/", "empty path component"),
        ("/busybox", "empty path component"),
        ("bad!name", "may hold only lowercase"),
        ("-busybox", "may hold only lowercase"),
        ("busybox-", "may hold only lowercase"),
        ("busybóx", "may hold only lowercase"),
        ("bad_host.io:port/app", "not a valid host"),
        ("-host.io/app", "not a valid host"),
        ("a" * 256, "at most 255 characters"),
        (HEX, "image ID"),
        (DIGEST, "image ID"),
    ],
)
def test_normalize_invalid_names_the_rule(given_ref: str, rule: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        normalize(given_ref)
    assert rule in caught.value.message
    assert caught.value.code == "INVALID_ARGUMENT"


def test_error_names_the_reference_and_a_fix() -> None:
    with pytest.raises(InvalidArgument, match=r'"Busybox:1\.36".*write "busybox"'):
        normalize("Busybox:1.36")


def test_non_string_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="is a string"):
        normalize(None)  # type: ignore[arg-type]


def test_module_does_not_import_grpc() -> None:
    code = "import sys, crilab.runtime.registry; sys.exit('grpc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_parse_reference_fields() -> None:
    ref = parse_reference(f"quay.io/team/app:v1@{DIGEST}")
    assert ref == Reference("quay.io", "team/app", "v1", DIGEST)
    assert ref.name == "quay.io/team/app"
    assert str(ref) == f"quay.io/team/app:v1@{DIGEST}"


@pytest.mark.parametrize(
    ("given_ref", "familiar"),
    [
        ("busybox", "busybox:latest"),
        ("user/app:2", "user/app:2"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause:3.10"),
        (f"alpine@{DIGEST}", f"alpine@{DIGEST}"),
    ],
)
def test_familiar_form(given_ref: str, familiar: str) -> None:
    assert parse_reference(given_ref).familiar == familiar


def test_is_image_id() -> None:
    assert is_image_id(DIGEST) and is_image_id(HEX)
    assert not is_image_id("busybox") and not is_image_id("sha256:abc")


# Grammar pieces for valid references, to check idempotence on many shapes.
_alnum = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=6)
_separator = st.sampled_from([".", "_", "__", "-", "--"])
_component = st.builds(
    lambda first, rest: first + "".join(sep + part for sep, part in rest),
    _alnum,
    st.lists(st.tuples(_separator, _alnum), max_size=2),
)
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)
_domain = st.sampled_from(["docker.io/", "quay.io/", "localhost/", "localhost:5000/"])
# Without a host, a first component holding '.' would be read as one: keep it plain.
_hostless = st.builds(
    lambda head, rest: "/".join([head, *rest]), _alnum, st.lists(_component, max_size=2)
)
_name = st.builds(str.__add__, _domain, _path) | _hostless
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.text("0123456789abcdef", min_size=64, max_size=64).map("sha256:".__add__)
valid_references = st.builds(
    lambda name, tag, digest: name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else ""),
    _name,
    st.none() | _tag,
    st.none() | _digest,
)


@given(st.text(max_size=80))
def test_normalize_raises_only_invalid_argument(text: str) -> None:
    try:
        normalized = normalize(text)
    except InvalidArgument:
        return
    assert normalize(normalized) == normalized


@given(valid_references)
def test_normalize_is_idempotent(reference: str) -> None:
    normalized = normalize(reference)
    assert normalize(normalized) == normalized
    assert normalized.startswith(("docker.io/", "quay.io/", "localhost/", "localhost:5000/"))


@pytest.mark.parametrize(
    ("reference", "low", "high"),
    [
        ("busybox:latest", 4 * MB, 5 * MB),
        ("busybox:1.36.1", 4 * MB, 5 * MB),
        ("alpine:3.20", 7 * MB, 9 * MB),
        ("alpine:3.19", 7 * MB, 9 * MB),
        ("nginx:1.27", 150 * MB, 250 * MB),
        ("nginx:alpine", 40 * MB, 60 * MB),
        ("registry.k8s.io/pause:3.9", MB // 2, MB),
        ("registry.k8s.io/pause:3.10", MB // 2, MB),
        ("localhost/crilab/busybox:local", MB, 10 * MB),
        ("localhost/crilab/pause:local", MB, 10 * MB),
    ],
)
def test_catalog_entry(registry: Registry, reference: str, low: int, high: int) -> None:
    image = registry.resolve(reference)
    assert low <= image.size <= high
    assert SHA256.fullmatch(image.id)
    assert image.repo_tags == (normalize(reference),)
    assert image.os == "linux" and image.architecture == "amd64"
    assert image.config_json()["config"]["Env"][0].startswith("PATH=")


@pytest.mark.parametrize(
    ("reference", "entrypoint", "cmd", "user"),
    [
        ("busybox", (), ("sh",), ""),
        ("alpine", (), ("/bin/sh",), ""),
        ("nginx", ("/docker-entrypoint.sh",), ("nginx", "-g", "daemon off;"), ""),
        ("registry.k8s.io/pause:3.10", ("/pause",), (), "65535"),
        ("localhost/crilab/pause:local", ("/bin/sleep", "2147483647"), (), ""),
        ("localhost/crilab/busybox:local", (), ("sh",), ""),
    ],
)
def test_catalog_config(
    registry: Registry, reference: str, entrypoint: tuple, cmd: tuple, user: str
) -> None:
    image = registry.resolve(reference)
    assert (image.entrypoint, image.cmd, image.user) == (entrypoint, cmd, user)


@pytest.mark.parametrize(
    ("reference", "distro"),
    [("busybox", "BusyBox"), ("alpine:3.19", "Alpine Linux v3.19"), ("nginx", "bookworm")],
)
def test_os_release(registry: Registry, reference: str, distro: str) -> None:
    assert distro in registry.resolve(reference).os_release


def test_tags_of_one_image_share_its_id(registry: Registry) -> None:
    ids = {registry.resolve(f"busybox:{tag}").id for tag in ("latest", "1.36", "1.36.1")}
    assert len(ids) == 1
    assert registry.resolve("alpine:3.20").id == registry.resolve("alpine").id
    assert registry.resolve("alpine:3.19").id != registry.resolve("alpine").id
    (busybox,) = [image for image in registry.images() if image.id in ids]
    assert set(busybox.repo_tags) == {
        f"docker.io/library/busybox:{t}" for t in ("latest", "1.36", "1.36.1")
    }


def test_catalog_ids_are_distinct_and_computed() -> None:
    assert len({image.id for image in CATALOG}) == len(CATALOG)
    for image in CATALOG:
        assert SHA256.fullmatch(image.id)
        for digest in image.repo_digests:
            name, _, value = digest.partition("@")
            assert SHA256.fullmatch(value) and name in {
                parse_reference(t).name for t in image.repo_tags
            }


def test_second_pull_of_the_same_image_merges_tags(registry: Registry) -> None:
    latest, pinned = registry.resolve("busybox"), registry.resolve("busybox:1.36")
    both = latest.merged(pinned).merged(pinned)
    assert both.repo_tags == ("docker.io/library/busybox:latest", "docker.io/library/busybox:1.36")
    assert both.repo_digests == latest.repo_digests
    with pytest.raises(InvalidArgument, match="different image"):
        latest.merged(registry.resolve("alpine"))


def test_repo_digests(registry: Registry) -> None:
    image = registry.resolve("busybox:1.36")
    (digest,) = image.repo_digests
    assert digest.startswith("docker.io/library/busybox@sha256:")
    by_digest = registry.resolve(digest)
    assert by_digest.id == image.id
    assert (by_digest.repo_tags, by_digest.repo_digests) == ((), (digest,))
    assert registry.resolve("localhost/crilab/busybox:local").repo_digests == ()


def test_synthesized_images_are_deterministic() -> None:
    first, second = (
        Registry().resolve("ghcr.io/acme/tool:v2"),
        Registry().resolve("ghcr.io/acme/tool:v2"),
    )
    assert first == second
    assert SHA256.fullmatch(first.id)
    assert 5 * MB <= first.size <= 200 * MB
    assert first.cmd == ("sh",)
    assert first.repo_tags == ("ghcr.io/acme/tool:v2",)
    assert first.repo_digests[0].startswith("ghcr.io/acme/tool@sha256:")


def test_synthesized_images_differ_by_reference(registry: Registry) -> None:
    refs = ["myapp", "myapp:v2", "ghcr.io/acme/tool:v2", "ghcr.io/acme/tool:v3", "quay.io/a/b"]
    ids = {registry.resolve(ref).id for ref in refs}
    assert len(ids) == len(refs)
    assert registry.resolve("myapp").id == registry.resolve("docker.io/library/myapp:latest").id


def test_synthesized_by_digest_keeps_the_digest(registry: Registry) -> None:
    image = registry.resolve(f"myapp:v1@{DIGEST}")
    assert image.repo_tags == ()
    assert image.repo_digests == (f"docker.io/library/myapp@{DIGEST}",)
    assert image == registry.resolve(f"myapp@{DIGEST}")


def test_new_tag_of_a_catalog_repository_looks_like_it(registry: Registry) -> None:
    image = registry.resolve("busybox:1.37")
    busybox = registry.resolve("busybox")
    assert image.id != busybox.id
    assert image.cmd == ("sh",) and "BusyBox" in image.os_release
    assert 0.9 * busybox.size <= image.size <= 1.1 * busybox.size
    assert "bookworm" in registry.resolve("nginx:1.26").os_release  # modelled on nginx:latest


@pytest.mark.parametrize("reference", ["example.invalid/nope:1", "registry.invalid:5000/x"])
def test_invalid_tld_is_not_found(registry: Registry, reference: str) -> None:
    with pytest.raises(NotFound, match=r"failed to resolve reference .*: not found") as caught:
        registry.resolve(reference)
    assert ".invalid" in caught.value.message and "never exists" in caught.value.message


def test_resolve_rejects_malformed(registry: Registry) -> None:
    with pytest.raises(InvalidArgument, match="must be lowercase"):
        registry.resolve("NGINX")


def test_extra_entries(registry: Registry) -> None:
    mine = build_image(["localhost/me/app:1"], size=12 * MB, cmd=["app"], user="nginx")
    custom = Registry([mine])
    assert custom.resolve("localhost/me/app:1") == mine
    assert custom.resolve("busybox").id == registry.resolve("busybox").id
    only = Registry([mine], builtin=False)
    assert only.images() == [mine]
    assert only.resolve("busybox").id != registry.resolve("busybox").id


@pytest.mark.parametrize(
    ("user", "uid", "username"),
    [("", 0, ""), ("65535", 65535, ""), ("1000:1000", 1000, ""), ("nginx", None, "nginx")],
)
def test_uid_and_username(user: str, uid: int | None, username: str) -> None:
    image = build_image(["x/y:1"], size=MB, user=user)
    assert (image.uid, image.username) == (uid, username)


def test_to_proto(registry: Registry) -> None:
    pause = registry.resolve("registry.k8s.io/pause:3.10").to_proto()
    assert isinstance(pause, api_pb2.Image)
    assert pause.id.startswith("sha256:") and pause.spec.image == pause.id
    assert list(pause.repo_tags) == ["registry.k8s.io/pause:3.10"]
    assert pause.repo_digests[0].startswith("registry.k8s.io/pause@sha256:")
    assert pause.size == 736_228
    assert pause.HasField("uid") and pause.uid.value == 65535 and pause.username == ""
    assert pause.pinned


def test_to_proto_user_forms(registry: Registry) -> None:
    # Like containerd: an image that sets no user leaves uid unset (the runtime runs it as 0).
    busybox = registry.resolve("busybox").to_proto()
    assert not busybox.HasField("uid") and busybox.username == "" and not busybox.pinned
    named = build_image(["x/y:1"], size=MB, user="nginx").to_proto()
    assert not named.HasField("uid") and named.username == "nginx"


def test_config_json(registry: Registry) -> None:
    config = registry.resolve("nginx").config_json()
    assert config["os"] == "linux" and config["architecture"] == "amd64"
    assert config["config"]["Cmd"] == ["nginx", "-g", "daemon off;"]
    assert config["config"]["ExposedPorts"] == {"80/tcp": {}}
    assert config["config"]["StopSignal"] == "SIGQUIT"
    assert "User" not in config["config"]
    assert all(SHA256.fullmatch(d) for d in config["rootfs"]["diff_ids"])


def test_records_are_frozen_and_hashable(registry: Registry) -> None:
    image = registry.resolve("busybox")
    assert isinstance(image, ImageRecord)
    with pytest.raises(AttributeError):
        image.size = 1  # type: ignore[misc]
    assert hash(image) == hash(registry.resolve("busybox"))

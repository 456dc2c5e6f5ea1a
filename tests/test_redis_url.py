"""REDIS_URL forms: Sentinel URLs parsed into what redis-py and arq need; bad forms refused at
start-up with one line naming REDIS_URL."""

from __future__ import annotations

import pytest

from durable.connection import arq_settings
from pipeline.errors import SettingsError
from pipeline.redis_url import describe, parse_sentinel, with_db
from pipeline.settings import Settings


def test_one_sentinel_and_service() -> None:
    """The simplest form names one Sentinel and the service; the database defaults to 0."""
    url = parse_sentinel("redis+sentinel://10.0.0.5:26379/mymaster")
    assert url.sentinels == (("10.0.0.5", 26379),)
    assert (url.service, url.db, url.username, url.password, url.tls) == (
        "mymaster",
        0,
        None,
        None,
        False,
    )


def test_several_sentinels_db_and_default_port() -> None:
    """Several Sentinels keep their order; a host without a port is on 26379; /DB is read."""
    url = parse_sentinel("redis+sentinel://s1:26380,s2,[::1]:26381/queue.main/3")
    assert url.sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert (url.service, url.db) == ("queue.main", 3)


def test_password_and_user_are_for_the_data_nodes() -> None:
    """user:password@ and :password@ are read, percent-decoded."""
    with_user = parse_sentinel("redis+sentinel://app:p%40ss%2Fw@s1:26379/svc")
    assert (with_user.username, with_user.password) == ("app", "p@ss/w")
    bare = parse_sentinel("redis+sentinel://:secret@s1:26379/svc/1")
    assert (bare.username, bare.password, bare.db) == (None, "secret", 1)


def test_tls_scheme() -> None:
    """rediss+sentinel:// asks for TLS to the data nodes."""
    assert parse_sentinel("rediss+sentinel://s1:26379/svc").tls is True


def test_display_masks_the_password() -> None:
    """A Sentinel URL in a log line never shows its password."""
    shown = describe("redis+sentinel://app:hunter2@s1:26379/svc/2")
    assert "hunter2" not in shown
    assert shown == "redis+sentinel://app:***@s1:26379/svc/2"


def test_with_db_changes_only_the_database() -> None:
    """The crash demo's per-scenario database works on a Sentinel URL too."""
    assert with_db("redis+sentinel://:pw@s1:26379,s2:1/svc", 4) == (
        "redis+sentinel://:pw@s1:26379,s2:1/svc/4"
    )
    assert with_db("redis+sentinel://s1:26379/svc/2", 5) == "redis+sentinel://s1:26379/svc/5"


def test_settings_accept_sentinel_urls() -> None:
    """Settings take both Sentinel schemes and the plain ones as before."""
    for url in (
        "redis+sentinel://s1:26379,s2:26379/svc/0",
        "rediss+sentinel://:pw@s1:26379/svc",
        "redis://localhost:6379/0",
        "unix:///tmp/redis.sock",
    ):
        assert Settings.from_env({"REDIS_URL": url}).redis_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://s1:26379/svc", "must start with redis://"),
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1:26379/", "names no service"),
        ("redis+sentinel://s1:port/svc", "no valid port"),
        ("redis+sentinel://s1:70000/svc", "no valid port"),
        ("redis+sentinel://s1:26379,,s2/svc", "empty Sentinel address"),
        ("redis+sentinel://s1:26379/svc/x", "database 'x' is not a number"),
        ("redis+sentinel://s1:26379/sv c", "service name"),
        ("redis+sentinel://user@s1:26379/svc", "credentials must be"),
        ("redis+sentinel://s1:26379/svc?db=1", "no query"),
        ("redis+sentinel://[::1/svc", "not [IPv6]:PORT"),
    ],
)
def test_bad_forms_name_redis_url(url: str, says: str) -> None:
    """Each bad form fails settings with one line naming REDIS_URL and what is wrong."""
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"REDIS_URL": url})
    line = str(caught.value)
    assert line.startswith("invalid REDIS_URL=")
    assert says in line
    assert "\n" not in line


def test_ack_settings_validated() -> None:
    """ACK_REPLICAS and ACK_TIMEOUT default to 0 and 1 s; bad values name the variable."""
    s = Settings.from_env({})
    assert (s.ack_replicas, s.ack_timeout) == (0, 1.0)
    for name, value in (("ACK_REPLICAS", "-1"), ("ACK_TIMEOUT", "0"), ("ACK_TIMEOUT", "60")):
        with pytest.raises(SettingsError, match=f"^invalid {name}="):
            Settings.from_env({name: value})


def test_arq_settings_for_a_sentinel_url() -> None:
    """The stock-arq engine gets arq's own Sentinel settings from the same URL."""
    rs = arq_settings("rediss+sentinel://u:pw@s1:26379,s2:26380/svc/2")
    assert rs.sentinel is True
    assert rs.host == [("s1", 26379), ("s2", 26380)]
    assert (rs.sentinel_master, rs.database, rs.username, rs.password, rs.ssl) == (
        "svc",
        2,
        "u",
        "pw",
        True,
    )
    plain = arq_settings("redis://localhost:6390/4")
    assert (plain.sentinel, plain.port, plain.database) == (False, 6390, 4)


def test_a_bad_redis_url_is_refused_without_showing_its_password() -> None:
    """The one-line settings error names REDIS_URL and what is wrong, with the password masked."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"REDIS_URL": "redis+sentinel://:s3cret@s1:26379"})
    assert "REDIS_URL" in str(refused.value) and "s3cret" not in str(refused.value)
    with pytest.raises(SettingsError) as plain:
        Settings.from_env({"REDIS_URL": "http://user:s3cret@host/0"})
    assert "REDIS_URL" in str(plain.value) and "s3cret" not in str(plain.value)

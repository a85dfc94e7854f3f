import pytest

from borg_cyrus.cyrus import imapdconf, layout
from borg_cyrus.errors import ConfigError


def parse(text):
    return imapdconf.parse_text(text)[0]


def test_rules_match_libconfig():
    v = parse(
        "# comment\n   \n  ConfigDirectory:   /var/lib/cyrus  \n"
        "partition-Default: /var/spool/a\\\nb\n"
        "sasl_pwcheck_method: saslauthd\n"
    )
    assert v == {
        "configdirectory": "/var/lib/cyrus",
        "partition-default": "/var/spool/ab",
        "sasl_pwcheck_method": "saslauthd",
    }


@pytest.mark.parametrize(
    "text,needle",
    [
        ("configdirectory /x\n", "invalid option name"),
        ("configdirectory:\n", "empty value"),
        ("a: 1\na: 2\n", "given twice"),
        ("@frobnicate: x\n", "unknown directive"),
    ],
)
def test_bad_lines_name_file_and_line(text, needle):
    with pytest.raises(ConfigError) as e:
        imapdconf.parse_text(text, "/etc/imapd.conf")
    assert needle in str(e.value) and "/etc/imapd.conf" in str(e.value) and "line" in str(e.value)


def test_include_and_configdirectory_expansion(tmp_path):
    inc = tmp_path / "part.conf"
    inc.write_text("partition-second: {configdirectory}/p2\n")
    main = tmp_path / "imapd.conf"
    main.write_text(f"configdirectory: /srv/cyrus\npartition-default: /srv/spool\n@include: {inc}\n")
    conf = imapdconf.load(str(main))
    assert conf.get("partition-second") == "/srv/cyrus/p2"
    assert conf.files == [str(main), str(inc)]
    lay = layout.discover(str(main))
    assert lay.partitions == {"default": "/srv/spool", "second": "/srv/cyrus/p2"}
    assert lay.database("mailboxes") == ("twoskip", "/srv/cyrus/mailboxes.db")
    assert lay.sievedir == "/usr/sieve"


def test_include_loop_is_an_error(tmp_path):
    main = tmp_path / "imapd.conf"
    main.write_text(f"configdirectory: /x\n@include: {main}\n")
    with pytest.raises(ConfigError, match="included twice"):
        imapdconf.load(str(main))


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        imapdconf.load("/nonexistent/imapd.conf")


def test_layout_of_a_rich_config(tmp_path):
    p = tmp_path / "imapd.conf"
    p.write_text(
        "configdirectory: /var/lib/cyrus\npartition-default: /var/spool/cyrus/mail\n"
        "partition-news: /var/spool/cyrus/news\nmetapartition-default: /var/spool/meta\n"
        "archivepartition-default: /var/spool/archive\nsievedir: /var/spool/sieve\n"
        "mboxlist_db_path: /srv/db/mailboxes.db\nduplicate_db: skiplist\n"
        "defaultsearchpartition-default: /var/lib/cyrus/search\nhashimapspool: true\n"
    )
    lay = layout.discover(str(p))
    assert lay.metapartitions == {"default": "/var/spool/meta"}
    assert lay.archivepartitions == {"default": "/var/spool/archive"}
    assert lay.searchpartitions == {"defaultsearchpartition-default": "/var/lib/cyrus/search"}
    assert lay.database("mailboxes") == ("twoskip", "/srv/db/mailboxes.db")
    assert lay.database("duplicate") == ("skiplist", "/var/lib/cyrus/deliver.db")
    assert lay.database("quota") == ("quotalegacy", "/var/lib/cyrus/quota")
    assert lay.runtime_paths["proc_path"] == "/var/lib/cyrus/proc"
    assert lay.hashimapspool is True

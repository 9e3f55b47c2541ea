from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pocketrec.data import (
    DataError,
    fetch_movielens,
    load,
    load_delimited,
    synthetic,
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


def test_load_movielens_100k_reads_every_rating_with_titles_and_genres(ml100k):
    log = load(ml100k)
    assert len(log) == 100_000 and log.num_users == 943 and log.num_items == 1682
    assert log.items_info["1"].title == "Toy Story (1995)"
    assert log.items_info["1"].genres == ("Animation", "Children's", "Comedy")
    assert log.weights is not None and set(np.unique(log.weights)) == {1, 2, 3, 4, 5}


def test_load_movielens_1m_format_is_detected(tmp_path):
    write(tmp_path / "ratings.dat", "1::10::5::978300760\n1::20::3::978302109\n")
    write(tmp_path / "movies.dat", "10::Heat (1995)::Action|Crime\n", encoding="latin-1")
    log = load(tmp_path)
    assert log.users.tolist() == [1, 1] and log.items.tolist() == [10, 20]
    assert log.timestamps.tolist() == [978300760, 978302109]
    assert log.items_info["10"].genres == ("Action", "Crime")
    assert "1M" in log.source


def test_load_movielens_latest_format_handles_quoted_titles(tmp_path):
    write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n3,7,4.5,100\n3,8,1,99\n")
    write(
        tmp_path / "movies.csv", 'movieId,title,genres\n7,"Heat, The (1995)",(no genres listed)\n'
    )
    log = load(tmp_path)
    assert log.items.tolist() == [7, 8] and log.weights.tolist() == [4.5, 1.0]
    assert log.items_info["7"] == log.items_info["7"].__class__("Heat, The (1995)", ())


def test_delimited_file_without_time_column_uses_file_order(tmp_path):
    path = write(tmp_path / "log.csv", "u1,i9\nu1,i3\nu2,i3\n")
    log = load(path, string_ids=True)
    assert log.users.tolist() == ["u1", "u1", "u2"]
    assert log.timestamps.tolist() == [0.0, 1.0, 2.0]


def test_delimited_header_is_detected_and_columns_resolve_by_name(tmp_path):
    path = write(tmp_path / "log.tsv", "when\titem\tuser\n2024-01-02\t5\t1\n2024-01-01\t6\t1\n")
    log = load_delimited(path, user_col="user", item_col="item", time_col="when")
    assert log.items.tolist() == [5, 6]
    assert log.timestamps[0] > log.timestamps[1]


QUERY_LOG = (
    "user,query,item,time\n"
    "u1,star wars,i9,3\n"
    "u1,,i3,1\n"  # an event without a query
    'u1,"heat, the",i4,2\n'
    "u2,comedy,i3,5\n"
    "u2,love,i9,4\n"
    "u2,star,i9,6\n"  # a repeat of (u2, i9): the split keeps the first event and its query
    "u2,paris,i5,7\n"
    "u1,drama,i6\n"  # no time: malformed, skipped
)


def test_a_query_column_by_name_reads_each_events_query_or_none(tmp_path):
    path = write(tmp_path / "log.csv", QUERY_LOG)
    log = load_delimited(
        path, user_col="user", item_col="item", time_col="time", query_col="query", string_ids=True
    )
    assert log.queries is not None and log.queries.tolist()[:3] == ["star wars", None, "heat, the"]
    assert len(log.queries) == len(log) == 7
    assert "6 with a search query" in log.summary()
    # Without the option nothing changes.
    assert load_delimited(path, user_col="user", item_col="item", string_ids=True).queries is None


def test_a_missing_trailing_query_field_is_an_event_without_a_query(tmp_path):
    path = write(tmp_path / "log.tsv", "1\t10\tspace\n1\t11\n2\t10\t\n")
    log = load_delimited(path, query_col=2)
    assert log.queries.tolist() == ["space", None, None] and not log.skipped


def test_the_split_keeps_each_kept_events_query_in_time_order(tmp_path):
    from pocketrec.evaluation import leave_last_out

    log = load(
        write(tmp_path / "log.csv", QUERY_LOG),
        user_col=0, item_col=2, time_col=3, query_col=1, header=True, string_ids=True,
    )  # fmt: skip
    split = leave_last_out(log)
    assert split.users.tolist() == ["u1", "u2"]
    queries = split.queries
    # u1 in time order: i3 (no query), i4, i9; u2: i9 (love; the later repeat dropped), i3, i5.
    assert queries.train == [[None], ["love"]]
    assert queries.valid == ["heat, the", "comedy"]
    assert queries.targets("test") == ["star wars", "paris"]
    # A target outside the universe keeps its query (the benchmark skips it by the target).
    assert split.item_ids[split.test[0]] == "i9" and split.test[1] == -1
    assert leave_last_out(load(tmp_path / "log.csv", string_ids=True, header=True)).queries is None


def test_queries_of_another_length_or_type_are_refused():
    from pocketrec.data import Interactions

    columns = {"users": np.array([1, 2]), "items": np.array([3, 4]), "timestamps": np.zeros(2)}
    with pytest.raises(ValueError, match="1 queries"):
        Interactions(**columns, queries=np.array(["a"], dtype=object))
    with pytest.raises(TypeError, match="str or None per event, got int 7"):
        Interactions(**columns, queries=np.array(["a", 7], dtype=object))


def test_malformed_lines_are_skipped_and_counted(tmp_path):
    path = write(tmp_path / "log.csv", "1,2,5\n1\n2,3,6\n")
    log = load_delimited(path, time_col=2)
    assert len(log) == 2 and log.skipped == {"malformed lines": 1}
    assert "skipped 1 malformed lines" in log.summary()


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("", {}, "is empty"),
        ("\n\n", {}, "is empty"),
        (",,\n , \n", {}, "has no interactions: every line is blank"),
        ("user,item\n", {}, "has a header line but no interactions"),
        ("1,2\n1,x\n", {}, r"log.csv:2: ids must be integers"),
        ("1,2\n", {"item_col": 5}, "column 5 does not exist"),
        ("user,item\n1,2\n", {"item_col": "movie"}, "no column named 'movie'"),
        ("1,2,yesterday\n", {"time_col": 2}, "neither a number nor an ISO date"),
        ("1,2,heavy\n", {"weight_col": 2}, "weight 'heavy' is not a number"),
        ("user,item\n1,2\n", {"query_col": "search"}, "no column named 'search' for the query"),
    ],
)
def test_bad_delimited_input_gets_a_clear_error(tmp_path, text, options, message):
    path = write(tmp_path / "log.csv", text)
    with pytest.raises(DataError, match=message):
        load_delimited(path, **options)


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("user_id,item_id\nu1,i9\nu2,i3\n", {}),  # id columns named like ids
        ("visitor,product,ts\nu1,i9,10\nu2,i3,11\n", {"time_col": 2}),  # time not a number
        ("a,b,rating\nu1,i9,4.5\nu2,i3,1\n", {"weight_col": 2}),  # weight not a number
    ],
)
def test_a_header_is_detected_with_string_ids(tmp_path, text, options):
    path = write(tmp_path / "log.csv", text)
    log = load_delimited(path, string_ids=True, **options)
    assert log.users.tolist() == ["u1", "u2"] and log.items.tolist() == ["i9", "i3"]


def test_header_option_overrides_detection_with_string_ids(tmp_path):
    path = write(tmp_path / "log.csv", "user,item\nu1,i9\n")
    log = load_delimited(path, string_ids=True, header=False)
    assert log.users.tolist() == ["user", "u1"]


def test_quoted_csv_fields_lose_their_quotes_and_keep_their_commas(tmp_path):
    path = write(tmp_path / "log.csv", '"user","item","t"\n"u1","Heat, The",5\n"u2", "i3",6\n')
    log = load_delimited(path, user_col="user", item_col="item", time_col="t", string_ids=True)
    assert log.users.tolist() == ["u1", "u2"] and log.items.tolist() == ["Heat, The", "i3"]
    assert log.timestamps.tolist() == [5.0, 6.0]


def test_double_colon_and_whitespace_files_still_split(tmp_path):
    colons = load_delimited(write(tmp_path / "a.dat", "1::10::5::100\n2::20::3::101\n"), time_col=3)
    spaces = load_delimited(write(tmp_path / "b.txt", "1  10 100\n2\t 20 101\n"), time_col=2)
    for log in (colons, spaces):
        assert log.users.tolist() == [1, 2] and log.items.tolist() == [10, 20]
        assert log.timestamps.tolist() == [100.0, 101.0]


def test_an_unclosed_quote_is_refused_with_its_line(tmp_path):
    path = write(tmp_path / "log.csv", 'u1,i1\nu2,"i2\n')
    with pytest.raises(DataError, match=r"log.csv:2: .*quot"):
        load_delimited(path, string_ids=True)


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_timestamps_and_weights_are_refused_with_their_line(tmp_path, bad):
    times = write(tmp_path / "times.csv", f"1,2,10\n1,3,{bad}\n")
    with pytest.raises(DataError, match=rf"times.csv:2: the timestamp '{bad}' is not finite"):
        load_delimited(times, time_col=2)
    weights = write(tmp_path / "weights.csv", f"1,2,4\n1,3,{bad}\n")
    with pytest.raises(DataError, match=rf"weights.csv:2: the weight '{bad}' is not finite"):
        load_delimited(weights, weight_col=2)


@pytest.mark.parametrize("string_ids", [False, True])
def test_a_utf8_byte_order_mark_is_not_part_of_the_first_row(tmp_path, string_ids):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"1,10\n2,20\n")
    log = load_delimited(path, string_ids=string_ids)
    expected = [1, 2] if not string_ids else ["1", "2"]
    assert log.users.tolist() == expected and len(log) == 2


def test_a_byte_order_mark_before_a_header_keeps_the_first_column_name(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbf" + b"user,item\n1,10\n")
    assert load_delimited(path, user_col="user", item_col="item").users.tolist() == [1]


def test_missing_path_and_non_movielens_folder_are_refused(tmp_path):
    with pytest.raises(DataError, match="no data at"):
        load(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="not a MovieLens folder"):
        load(tmp_path)


def test_synthetic_log_is_deterministic_and_sequential():
    a = synthetic(300, 500, seed=3)
    b = synthetic(300, 500, seed=3)
    assert np.array_equal(a.items, b.items) and np.array_equal(a.users, b.users)
    assert not np.array_equal(a.items, synthetic(300, 500, seed=4).items)
    assert a.num_users == 300 and a.items.max() < 500
    assert all(info.genres for info in a.items_info.values())
    # Sequential structure: repeated (item, next item) pairs are far above chance.
    same_user = a.users[1:] == a.users[:-1]
    pairs = a.items[:-1][same_user] * 500 + a.items[1:][same_user]
    _, counts = np.unique(pairs, return_counts=True)
    assert counts.max() > 20


def _serve(directory: Path):
    handler = lambda *args: http.server.SimpleHTTPRequestHandler(  # noqa: E731
        *args, directory=str(directory)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_fetch_refuses_an_archive_whose_checksum_does_not_match(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
    (mirror / "ml-100k.zip").write_bytes(buffer.getvalue())
    server = _serve(mirror)
    try:
        with pytest.raises(DataError, match="checksum mismatch"):
            fetch_movielens(
                "100k", tmp_path / "cache", base_url=f"http://127.0.0.1:{server.server_port}"
            )
    finally:
        server.shutdown()
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_fetch_offline_says_so(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DataError, match="offline"):
        fetch_movielens("100k", tmp_path, base_url=f"http://127.0.0.1:{port}", timeout=2)


def test_fetch_reuses_a_verified_cache_without_network(tmp_path):
    cached = tmp_path / "ml-100k"
    cached.mkdir()
    (cached / ".verified").write_text(hashlib.md5(b"x").hexdigest())
    assert fetch_movielens("100k", tmp_path, base_url="http://127.0.0.1:9") == cached


def test_fetch_rejects_unknown_dataset_names(tmp_path):
    with pytest.raises(ValueError, match="unknown MovieLens dataset"):
        fetch_movielens("7m", tmp_path)

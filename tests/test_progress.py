"""The driver's view of a running job: rank 0's messages through the run directory's events
file (pipelines/job/messages.py, pipelines/job/progress.py)."""

import threading

from raysift.job.messages import EpochDone, Notes, PhaseDone, ScanProgress, append, parse
from raysift.job.progress import Feed


def test_a_message_comes_back_as_it_was_sent(tmp_path):
    sent = [
        EpochDone("round 0", 1, 3, 0.5),
        ScanProgress("round 0", 1024, 7),
        Notes(["initial subset: 10 rows"]),
        PhaseDone({"round": 0, "curve": [{"epoch": 0}]}, ["a note"], None),
    ]
    for message in sent:
        append(tmp_path / "events.jsonl", message)
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [parse(line) for line in lines] == sent


def test_a_relative_path_reaches_a_writer_in_another_folder(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    shown = []
    with Feed("run/events.jsonl", shown.append) as events:
        monkeypatch.chdir(tmp_path / "elsewhere")  # as a Ray Train worker's own folder
        append(events, Notes(["from a worker"]))
    assert events == str(tmp_path / "run" / "events.jsonl")
    assert shown == [Notes(["from a worker"])]


def test_the_feed_shows_whole_lines_in_order_and_the_last_ones_after_the_run(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind": "Notes", "lines": ["from the session before a resume"]}\n')
    shown = []
    with Feed(path, shown.append) as events:
        append(events, Notes(["one"]))
        two = path.read_text().replace("one", "two")
        with open(events, "a") as f:  # a line caught half written is shown once it is whole
            f.write(two[:5])
        threading.Event().wait(0.5)  # the feed reads twice meanwhile
        assert shown == [Notes(["one"])]
        with open(events, "a") as f:
            f.write(two[5:])
        append(events, PhaseDone({"round": 0}, [], "max_rounds 1 reached"))  # at the very end
    assert shown == [
        Notes(["one"]),
        Notes(["two"]),
        PhaseDone({"round": 0}, [], "max_rounds 1 reached"),
    ]

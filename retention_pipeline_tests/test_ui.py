"""End to end through the Dagster UI in headless Chromium (issue 9).

One module-scoped Dagster: `retention-pipeline demo --users 400` seeds a private state dir, then
`retention-pipeline dev` serves the UI on a free port. The tests drive the pages a person would use
(asset lineage, schedules, asset checks, the launchpad, a backfill), cross-check what the pages show
against Dagster's GraphQL API, and save screenshots to test-artifacts/ui/. The last test stops the UI
with SIGTERM and asserts that nothing of ours is left running.

The tests run in file order: the read-only pages first, then the launchpad run, which happens while the
backfill (launched just before it) waits for the backfill daemon's 30-second ticks.

Chromium is Debian's (/usr/bin/chromium, installed by .ci/run); under CI a missing browser fails the
run, locally it skips the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta

import psutil
import pytest

from retention_pipeline.settings import PROJECT_ROOT
from retention_pipeline_tests.faults import wait_until
from retention_pipeline_tests.ui_support import (
    ARTIFACTS,
    CHROMIUM_FLAGS,
    DagsterUI,
    find_chromium,
    free_port,
    in_ci,
)

# Marked slow (a demo, `dev` and Chromium: minutes), never skipped: the plain `uv run pytest` run, CI
# included, runs it; only `-m "not slow"` leaves it out. The project-wide 600 s timeout applies per test;
# the first test also pays for the demo and the UI start.
pytestmark = pytest.mark.slow

ASSETS = (
    "daily_activity_snapshots",
    "stripe_subscriptions",
    "weekly_engagement_segments",
    "dormant_users",
    "reengagement_emails",
    "reengagement_outcomes",
    "campaign_performance",
)
GROUPS = ("activity", "billing", "segments", "outreach", "outcomes")
SCHEDULES = ("billing_snapshot_schedule", "daily_morning_schedule", "weekly_segments_schedule")
SNAPSHOT_CHECKS = ("events_vs_trailing_median", "not_empty", "orphan_events", "trigger_health")
LOCATION = "retention_pipeline"
REPOSITORY = "__repository__"
BACKFILL_DAYS = 14
VIEWPORT = {"width": 1600, "height": 1000}


def _unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(
            f"{reason} CI must run the UI test: .ci/run installs Debian's chromium (apt-get install chromium).", pytrace=False
        )
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium_path() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed (`uv sync` installs the dev group).")
    path = find_chromium()
    if path is None:
        explicit = os.environ.get("RETENTION_CHROMIUM")
        _unavailable(
            f"RETENTION_CHROMIUM={explicit} is not an executable."
            if explicit
            else "No Chromium found (/usr/bin/chromium or `chromium` on PATH; `apt-get install chromium`)."
        )
    return path


@pytest.fixture(scope="module")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


@pytest.fixture(scope="module")
def dagster_ui(chromium_path, artifacts):
    state_dir = PROJECT_ROOT / ".retention" / f"test-ui-{uuid.uuid4().hex[:8]}"
    ui = DagsterUI(state_dir=state_dir, port=free_port(), log_dir=artifacts)
    try:
        ui.run_demo(users=400)
        ui.start()
        yield ui
    finally:
        try:
            ui.stop()
            leftovers = ui.wait_until_gone()
            if leftovers:
                ui.kill_leftovers()
                pytest.fail(f"processes left after stopping the UI:\n{ui.describe(leftovers)}", pytrace=False)
        finally:
            shutil.rmtree(state_dir, ignore_errors=True)
            print("\nUI test timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in ui.timings.items()))


@pytest.fixture(scope="module")
def browser(chromium_path, dagster_ui):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, dagster_ui, artifacts, request):
    context = browser.new_context(viewport=VIEWPORT, base_url=dagster_ui.base_url)
    context.set_default_timeout(30_000)
    page = context.new_page()
    failed_before = request.session.testsfailed
    yield page
    if request.session.testsfailed > failed_before:  # keep what the browser showed when the test failed
        page.screenshot(path=str(artifacts / f"FAILED-{request.node.name}.png"))
    context.close()


def _dismiss_community_dialog(page) -> None:
    """Belt and braces: setNuxSeen normally keeps the first-visit dialog away."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count() and skip.first.is_visible():
        skip.first.click()


def _in_viewport(locator, page) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    return (
        bool(box) and box["width"] > 0 and box["height"] > 0 and 0 <= box["x"] < size["width"] and 0 <= box["y"] < size["height"]
    )


def _on_screen(page, text: str) -> bool:
    """Some element showing exactly `text` is on screen (with the asset tree hidden, that means in the graph)."""
    return any(_in_viewport(element, page) for element in page.get_by_text(text, exact=True).all())


def _metadata(materialization: dict) -> dict:
    values = {}
    for entry in materialization["metadataEntries"]:
        for key in ("intValue", "floatValue", "text", "mdStr"):
            if key in entry:
                values[entry["label"]] = entry[key]
        if "jsonString" in entry:
            values[entry["label"]] = json.loads(entry["jsonString"])
    return values


_PARTITION_KEYS = """
query PartitionKeys($asset: AssetKeyInput!) {
  assetNodeOrError(assetKey: $asset) { ... on AssetNode { partitionKeysByDimension { partitionKeys } } }
}"""

_MATERIALIZATIONS = """
query Materializations($asset: AssetKeyInput!, $partitions: [String!], $limit: Int) {
  assetOrError(assetKey: $asset) {
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: $limit) {
        partition runId timestamp
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
          ... on TextMetadataEntry { text }
          ... on MarkdownMetadataEntry { mdStr }
          ... on JsonMetadataEntry { jsonString }
        }
      }
    }
  }
}"""


def _partition_keys(ui: DagsterUI, asset: str) -> list[str]:
    node = ui.graphql(_PARTITION_KEYS, {"asset": {"path": [asset]}})["assetNodeOrError"]
    return node["partitionKeysByDimension"][0]["partitionKeys"]


def _materializations(ui: DagsterUI, asset: str, partitions: list[str] | None = None, limit: int = 200) -> list[dict]:
    data = ui.graphql(_MATERIALIZATIONS, {"asset": {"path": [asset]}, "partitions": partitions, "limit": limit})
    return data["assetOrError"]["assetMaterializations"]


_ROW_TEXT_JS = """
([name, pattern]) => {
  const label = Array.from(document.querySelectorAll('body *')).find(
    (el) => el.children.length === 0 && el.textContent.trim() === name);
  const re = new RegExp(pattern);
  let row = label;
  while (row && !re.test(row.innerText)) row = row.parentElement;
  return row ? row.innerText : null;
}"""


def _row_text(page, name: str, pattern: str) -> str | None:
    """The text of the smallest element around the label `name` whose text matches `pattern` (a table row)."""
    return page.evaluate(_ROW_TEXT_JS, [name, pattern])


_RUN = """
query Run($id: ID!) {
  runOrError(runId: $id) { __typename ... on Run { runId status jobName tags { key value } } }
}"""


def _run(ui: DagsterUI, run_id: str) -> dict:
    return ui.graphql(_RUN, {"id": run_id})["runOrError"]


# -- 1. asset lineage (read-only; first, so the graph shows the demo's state) --------------------------------


def test_asset_lineage_shows_every_asset_in_its_group(page, dagster_ui, artifacts):
    page.goto("/asset-groups")  # Lineage in the left navigation: "Global asset lineage"
    page.get_by_text("Global asset lineage").wait_for()
    _dismiss_community_dialog(page)
    page.get_by_role("button", name="Hide navigation").click()
    # Hide the asset tree beside the graph first, so the graph fits the whole width when it lays out again.
    page.locator("button:has([aria-label='panel_show_right'])").first.click()
    page.get_by_placeholder("Jump to…").wait_for(state="hidden")
    # The global graph opens with every group collapsed into one node; its context menu expands them all.
    wait_until(lambda: all(_on_screen(page, g) for g in GROUPS), 30, "the collapsed group nodes", interval=0.5)
    size = page.viewport_size
    page.mouse.click(size["width"] - 150, 150, button="right")
    page.get_by_role("menuitem", name="Expand all groups").click()
    for asset in ASSETS:
        node = page.locator(f'[data-tooltip="{asset}"]').first
        node.wait_for(state="visible")
    page.wait_for_timeout(1000)  # the graph animates into place after the layout changes

    invisible = [a for a in ASSETS if not _in_viewport(page.locator(f'[data-tooltip="{a}"]').first, page)]
    assert not invisible, f"assets not visible in the lineage graph: {invisible}"
    # Each asset's full name is written on its node (zoomed out, the graph would show "daily_a…_snapshots").
    not_written = [a for a in ASSETS if not _on_screen(page, a)]
    assert not not_written, f"asset names not written out in the graph: {not_written}"
    groups_missing = [g for g in GROUPS if not _on_screen(page, g)]
    assert not groups_missing, f"groups not shown in the lineage graph: {groups_missing}"

    shot = artifacts / "01-asset-lineage.png"
    page.screenshot(path=str(shot))

    # Cross-check the graph against the definitions the webserver serves.
    nodes = dagster_ui.graphql("{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    assert {n["assetKey"]["path"][0]: n["groupName"] for n in nodes} == {
        "daily_activity_snapshots": "activity",
        "stripe_subscriptions": "billing",
        "weekly_engagement_segments": "segments",
        "dormant_users": "segments",
        "reengagement_emails": "outreach",
        "reengagement_outcomes": "outcomes",
        "campaign_performance": "outcomes",
    }


# -- 2. schedules and checks (read-only; before the backfill re-runs the checks) -----------------------------

_SCHEDULES = """
query Schedules($repo: RepositorySelector!) {
  schedulesOrError(repositorySelector: $repo) { ... on Schedules { results { name scheduleState { status } } } }
}"""

_CHECK_EXECUTIONS = """
query CheckExecutions($key: AssetKeyInput!, $check: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $check, limit: 1) { status evaluation { success severity } }
}"""

_SWITCHES_JS = """
(names) => names.map((name) => {
  const label = Array.from(document.querySelectorAll('body *')).find(
    (el) => el.children.length === 0 && el.textContent.trim() === name);
  let row = label;
  const switchesIn = (el) => el.querySelectorAll('label[class*="formatSwitch"] input[type=checkbox]');
  while (row && switchesIn(row).length === 0) row = row.parentElement;
  const switches = row ? switchesIn(row) : [];
  return {name, found: !!label, switches: switches.length, on: switches.length === 1 && switches[0].checked};
})"""


def test_schedules_are_running_and_checks_pass(page, dagster_ui, artifacts):
    ui = dagster_ui
    page.goto("/automation")
    _dismiss_community_dialog(page)
    for name in SCHEDULES:
        page.get_by_text(name, exact=True).wait_for()

    # The rows render first and their toggles fill in once each schedule's state has loaded.
    def toggles():
        return page.evaluate(_SWITCHES_JS, list(SCHEDULES))

    try:
        wait_until(lambda: all(row["switches"] == 1 and row["on"] for row in toggles()), 20, "the toggles", interval=0.5)
    except AssertionError:
        raise AssertionError(f"schedules not all shown as running: {toggles()}") from None
    page.screenshot(path=str(artifacts / "04-schedules.png"))
    repo = {"repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}
    states = ui.graphql(_SCHEDULES, {"repo": repo})["schedulesOrError"]["results"]
    assert {s["name"]: s["scheduleState"]["status"] for s in states} == {name: "RUNNING" for name in SCHEDULES}

    page.goto("/assets/daily_activity_snapshots?view=checks")
    page.get_by_text(f"Checks ({len(SNAPSHOT_CHECKS)})").wait_for()
    rows = page.locator('[class*="checkRow"]')
    wait_until(lambda: rows.count() == len(SNAPSHOT_CHECKS), 15, "one row per check", interval=0.5)
    for name in SNAPSHOT_CHECKS:
        row = rows.filter(has=page.get_by_title(name, exact=True))
        assert row.count() == 1, name
        assert "Succeeded" in row.inner_text(), row.inner_text()
        icon = row.locator('[role="img"]').first
        assert icon.get_attribute("aria-label") == "check_circle"
        assert "accent-green" in (icon.get_attribute("style") or ""), f"{name}: the status icon is not green"
    page.get_by_text("Passed", exact=True).first.wait_for()  # the selected check's latest evaluation
    page.screenshot(path=str(artifacts / "04-asset-checks.png"))

    for name in SNAPSHOT_CHECKS:
        executions = ui.graphql(_CHECK_EXECUTIONS, {"key": {"path": ["daily_activity_snapshots"]}, "check": name})
        latest = executions["assetCheckExecutions"][:1]
        assert latest and latest[0]["status"] == "SUCCEEDED" and latest[0]["evaluation"]["success"], (name, latest)


_LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
  }
}"""

_BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      id status isAssetBackfill
      error { message }
      runs { runId status tags { key value } }
      snapshots: partitionsTargetedForAssetKey(assetKey: {path: ["daily_activity_snapshots"]}) {
        partitionKeys ranges { start end }
      }
      dormant: partitionsTargetedForAssetKey(assetKey: {path: ["dormant_users"]}) {
        partitionKeys ranges { start end }
      }
    }
    ... on PythonError { message }
  }
}"""


# -- 3. launchpad, while the backfill runs -------------------------------------------------------------------
#
# The backfill daemon ticks every 30 s (one tick launches the run, a later one marks the backfill done), so
# the backfill is launched first and the launchpad run happens while the daemon waits. The two runs touch
# different tables (the segments read daily_activity, which the backfill rewrites with identical rows).


@dataclass
class Backfill:
    backfill_id: str
    days: list[str]
    launched_at: float


@pytest.fixture(scope="module")
def backfill(dagster_ui) -> Backfill:
    """A backfill of the last 14 daily partitions of daily_activity_snapshots + dormant_users, launched
    with the parameters the UI's partition dialog sends for a pure asset backfill."""
    ui = dagster_ui
    # Ending the range at the latest partition matters: for a range that ends earlier, Dagster adds
    # dormant_users' later days too (its 90-day lookback mapping), and then the two cannot share a run.
    days = _partition_keys(ui, "daily_activity_snapshots")[-BACKFILL_DAYS:]
    assert [date.fromisoformat(d) for d in days] == [
        date.fromisoformat(days[0]) + timedelta(days=i) for i in range(BACKFILL_DAYS)
    ]
    materialized_by_demo = {m["partition"] for m in _materializations(ui, "daily_activity_snapshots", days)}
    assert materialized_by_demo == set(days), (
        f"the backfill range {days[0]}..{days[-1]} should lie within the demo's data; missing "
        f"{sorted(set(days) - materialized_by_demo)} (did the UTC day change since the demo ran?)"
    )
    params = {
        "assetSelection": [{"path": ["daily_activity_snapshots"]}, {"path": ["dormant_users"]}],
        "partitionNames": days,
        "fromFailure": False,
        "title": "UI test: 14-day backfill",
        "tags": [{"key": "retention/test", "value": "ui"}],
    }
    launched_at = time.monotonic()
    launched = ui.graphql(_LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return Backfill(launched["backfillId"], days, launched_at)


def test_launchpad_config_changes_the_segments(page, dagster_ui, artifacts, backfill):
    ui = dagster_ui
    asset = "weekly_engagement_segments"
    # The demo computes every complete week in one range run, which records each week's own figures on
    # that week's partition. Compare on the latest week the demo computed.
    demo_weeks = {m["partition"] for m in _materializations(ui, asset, limit=50)}
    assert demo_weeks, "the demo materialized no week"
    week = max(demo_weeks)
    before = _materializations(ui, asset, [week])
    default = _metadata(before[0])
    assert default["thresholds"]["power_min_active_days"] == 4

    page.goto(f"/locations/{LOCATION}/jobs/weekly_segments_job/playground")
    _dismiss_community_dialog(page)
    partition = page.get_by_placeholder("Partition")
    partition.click()
    partition.fill(week)
    page.get_by_role("menuitem", name=week, exact=True).click()
    page.get_by_text(f"partition: {week}").wait_for()
    # Choosing a partition reloads the editor with that partition's config: edit afterwards, like a person.
    line = page.locator(".CodeMirror-line", has_text="power_min_active_days")
    line.wait_for()
    assert line.inner_text().strip() == "power_min_active_days: 4"
    line.click()
    page.keyboard.press("End")
    page.keyboard.press("Backspace")
    page.keyboard.type("6")
    wait_until(lambda: "power_min_active_days: 6" in line.inner_text(), 10, "the edited config line", interval=0.2)
    config = page.evaluate("() => document.querySelector('.CodeMirror').CodeMirror.getValue()")
    assert "power_min_active_days: 6" in config
    page.get_by_text("No errors").wait_for()  # the launchpad validated the edited config
    page.mouse.move(700, 900)  # no hover tooltip over the screenshot
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / "03-launchpad.png"))

    started = time.monotonic()
    page.get_by_role("button", name="Launch Run").click()
    page.wait_for_url(re.compile(r".*/runs/[0-9a-f-]{36}"))
    run_id = re.search(r"/runs/([0-9a-f-]{36})", page.url).group(1)

    def done():
        run = _run(ui, run_id)
        return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

    run = wait_until(done, 180, f"run {run_id}", interval=1)
    ui.timings["launchpad_run"] = time.monotonic() - started
    assert run["status"] == "SUCCESS", run
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert run["jobName"] == "weekly_segments_job" and tags["dagster/partition"] == week

    ours = [m for m in _materializations(ui, asset, [week]) if m["runId"] == run_id]
    assert len(ours) == 1
    changed = _metadata(ours[0])
    assert changed["thresholds"] == {**default["thresholds"], "power_min_active_days": 6}
    # Power now needs 6 active days: fewer power users, the rest fall to `active`; nobody is lost.
    assert changed["users_power"] < default["users_power"], (changed["users_power"], default["users_power"])
    assert changed["users_active"] > default["users_active"]
    segments = [k for k in default if k.startswith("users_")]
    assert sum(changed[k] for k in segments) == sum(default[k] for k in segments)
    assert changed["segment_distribution"] != default["segment_distribution"]

    page.goto(f"/assets/{asset}?view=partitions&partition={week}")
    page.get_by_text(run_id[:8]).first.wait_for()
    page.get_by_text('"power_min_active_days": 6').wait_for()
    page.get_by_text(f"Week starting {week}").wait_for()
    page.screenshot(path=str(artifacts / "03-asset-metadata.png"))


# -- 4. the backfill -----------------------------------------------------------------------------------------


def test_backfill_of_14_days_runs_as_one_run(page, dagster_ui, artifacts, backfill):
    ui, days = dagster_ui, backfill.days

    def finished():
        state = ui.graphql(_BACKFILL, {"id": backfill.backfill_id})["partitionBackfillOrError"]
        assert state["__typename"] == "PartitionBackfill", state
        return state if state["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

    state = wait_until(finished, 240, f"backfill {backfill.backfill_id} to finish", interval=2)
    ui.timings["backfill"] = time.monotonic() - backfill.launched_at
    assert state["status"] == "COMPLETED_SUCCESS", state
    assert state["isAssetBackfill"]
    # Both assets target exactly the 14 days (time partitions come back as ranges).
    for asset in ("snapshots", "dormant"):
        targeted = state[asset]
        assert targeted["partitionKeys"] in (None, days), (asset, targeted)
        assert targeted["ranges"] in (None, [{"start": days[0], "end": days[-1]}]), (asset, targeted)

    # BackfillPolicy.single_run(): both assets, all 14 days, in ONE run.
    assert len(state["runs"]) == 1, f"expected one run, got {[(r['runId'], r['status']) for r in state['runs']]}"
    run = state["runs"][0]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert run["status"] == "SUCCESS"
    run_range = (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"])
    assert run_range == (days[0], days[-1]), run_range
    for asset in ("daily_activity_snapshots", "dormant_users"):
        by_run = [m for m in _materializations(ui, asset, days) if m["runId"] == run["runId"]]
        assert sorted(m["partition"] for m in by_run) == days, asset

    page.goto(f"/runs/b/{backfill.backfill_id}")
    _dismiss_community_dialog(page)
    selection = page.get_by_text("Partition selection").locator("xpath=..")
    wait_until(lambda: f"{days[0]}...{days[-1]}" in selection.inner_text(), 30, "the partition selection", interval=0.5)
    page.get_by_text("Succeeded", exact=True).first.wait_for()
    for asset in ("daily_activity_snapshots", "dormant_users"):
        # Asset name, progress, then the columns: targeted, in progress, succeeded, failed.
        row = wait_until(
            lambda asset=asset: _row_text(page, asset, r"completed(\s+\d+){4}"), 30, f"the {asset} row", interval=0.5
        )
        counts = [int(n) for n in re.findall(r"\d+", row.split("completed", 1)[1])]
        assert counts == [BACKFILL_DAYS, 0, BACKFILL_DAYS, 0], (asset, row)
    page.screenshot(path=str(artifacts / "02-backfill.png"))
    page.goto(f"/runs/b/{backfill.backfill_id}?tab=runs")
    page.get_by_text(run["runId"][:8], exact=True).wait_for()
    page.screenshot(path=str(artifacts / "02-backfill-runs.png"))


# -- 5. stopping ---------------------------------------------------------------------------------------------


def test_sigterm_stops_everything(dagster_ui):
    ui = dagster_ui
    running = []
    for process in ui.our_processes():
        try:
            running.append(" ".join(process.cmdline()))
        except psutil.Error:  # a short-lived process (a run worker) ended meanwhile
            pass
    # The leak check must be able to see what it checks for: the embedded server and dagster's processes.
    assert any("postgres" in c and str(ui.state_dir) in c for c in running), running
    for part in ("dagster_webserver", "dagster._daemon", "dagster dev"):
        assert any(part in c for c in running), (part, running)
    ui.stop()
    leftovers = ui.wait_until_gone(timeout=30)
    assert not leftovers, f"still running after SIGTERM:\n{ui.describe(leftovers)}"

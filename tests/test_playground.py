"""The playground page (issue 9, part 5), in a real headless browser: Debian's chromium
driven by Playwright against a real `pdp serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support.servers import Server
from tests.support.world import World

pytestmark = pytest.mark.process  # a browser loads the page from a served PDP

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/services installs Debian's chromium")
    # The suites of a candidate run in a sandbox process: on a loaded machine (make test
    # runs two workers) they take longer than Playwright's 5 s default.
    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


def opened(browser: Browser, server: Server, token: str) -> Page:
    page = browser.new_page()
    page.goto(server.url + "/playground")
    page.fill("#token", token)
    page.click("#connect")
    expect(page.locator("#policy")).to_contain_text("policy sha256:")
    return page


def test_the_page_decides_and_explains(browser: Browser, server: Server, world: World) -> None:
    page = opened(browser, server, "t-policy")
    assert page.locator("#users option").count() >= 1
    page.fill("#user", world.user)
    page.fill("#client", world.client)
    page.select_option("#category", "service_needs_plans")
    page.select_option("#purpose", "coaching")
    page.select_option("#action", "read")
    page.click("#decide")
    expect(page.locator("#decision")).to_contain_text("allow allowed")
    rows = page.locator("#rules tbody tr")
    expect(rows).to_have_count(13)
    assert page.locator("#rules tbody tr.fail").count() == 0
    # Another category: denied, and the page says which rule failed.
    page.select_option("#category", "benefits")
    page.click("#decide")
    expect(page.locator("#decision")).to_contain_text("deny category_not_necessary")
    failed = page.locator("#rules tbody tr.fail")
    expect(failed).to_have_count(2)  # not necessary (9), so no power over it either (11)
    expect(failed.first).to_contain_text("category_not_necessary")
    expect(failed.last).to_contain_text("action_not_permitted")
    page.close()


def test_the_page_runs_the_suites_on_an_edited_candidate(browser: Browser,
                                                         server: Server) -> None:
    page = opened(browser, server, "t-policy")
    page.select_option("#file", "data.polar")
    source = page.input_value("#source")
    assert 'task_profile("coaching", "service_needs_plans");' in source
    page.fill("#source", source.replace(
        'task_profile("coaching", "service_needs_plans");', ""))
    page.click("#test")
    expect(page.locator("#suites")).to_contain_text("FAILED:")
    expect(page.locator("#failures li").first).to_contain_text("category_not_necessary")
    page.click("#reset")
    page.select_option("#file", "data.polar")
    page.click("#test")
    expect(page.locator("#suites")).to_contain_text("PASSED:")
    page.close()


def test_without_a_policy_admin_token_the_page_shows_nothing(browser: Browser,
                                                             server: Server) -> None:
    page = browser.new_page()
    page.goto(server.url + "/playground")
    page.fill("#token", "t-pep")
    page.click("#connect")
    expect(page.locator("#error")).to_contain_text("forbidden")
    assert page.locator("#users option").count() == 0
    page.close()


def test_the_page_refuses_a_candidate_that_would_run_code(browser: Browser, server: Server,
                                                          tmp_path: Path) -> None:
    """The escape of tests/test_policy_vet.py typed into the playground: refused with its
    file, line and construct, and nothing of it ran."""
    from tests.support.escapes import RCE

    out = tmp_path / "rce.txt"
    page = opened(browser, server, "t-policy")
    page.select_option("#file", "rules.polar")
    source = page.input_value("#source")
    page.fill("#source", source + "\n" + RCE.format(out=out))
    page.click("#test")
    expect(page.locator("#error")).to_contain_text("policy_rejected")
    expect(page.locator("#error")).to_contain_text("outside the safe subset")
    expect(page.locator("#error")).to_contain_text("rules.polar:")
    expect(page.locator("#error")).to_contain_text("__class__")
    assert "PASSED" not in page.locator("#suites").inner_text()
    assert not out.exists()
    page.close()

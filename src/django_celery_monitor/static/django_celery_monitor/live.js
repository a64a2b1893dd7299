/* django-celery-monitor: the live refresh of the dashboard and of the task and worker lists.
 *
 * A checkbox with data-cm-live="<url>" turns it on or off (remembered in this browser).
 * While it is on and the tab is visible, the page asks again every few seconds:
 * - the dashboard asks its JSON endpoint, whose "html" (rendered and escaped by the server)
 *   replaces the element named by data-cm-live-target;
 * - a list (data-cm-live="list") asks its own URL again and takes the new rows, paginator
 *   and filter counts, and skips a turn while rows are selected or an action is chosen.
 * Nothing is refreshed while the tab is hidden; it catches up when it is shown again.
 */
'use strict';
{
    const STORAGE_KEY = 'django-celery-monitor:live';

    function stored() {
        try {
            return window.localStorage.getItem(STORAGE_KEY) === '1';
        } catch (error) {
            return false;
        }
    }

    function store(on) {
        try {
            window.localStorage.setItem(STORAGE_KEY, on ? '1' : '0');
        } catch (error) { /* private mode: the toggle is just not remembered */ }
    }

    function setStatus(toggle, text, failed) {
        const status = toggle.closest('.cm-toolbar')?.querySelector('.cm-live-status');
        if (status) {
            status.textContent = text;
            status.classList.toggle('cm-live-failed', Boolean(failed));
        }
    }

    function now() {
        return new Date().toLocaleTimeString();
    }

    // A request that has not answered in this many refresh periods is given up (a proxy that
    // took the connection and never answers would stop the refresh for good).
    const PATIENCE = 2;

    async function ask(url, accept, seconds) {
        const controller = new AbortController();
        const timer = window.setTimeout(() => controller.abort(), PATIENCE * seconds * 1000);
        try {
            const response = await fetch(url, {
                credentials: 'same-origin',
                headers: {'Accept': accept},
                cache: 'no-store',
                signal: controller.signal,
            });
            if (response.redirected) {
                // The admin sends a visitor whose session ended to its login page.
                throw new Error(gettextOr('the page moved (logged out?): reload it'));
            }
            if (!response.ok) {
                throw new Error(String(response.status));
            }
            return response;
        } catch (error) {
            if (error.name === 'AbortError') {
                throw new Error(gettextOr('no answer'));
            }
            throw error;
        } finally {
            window.clearTimeout(timer);
        }
    }

    async function refreshDashboard(toggle, seconds) {
        const url = toggle.dataset.cmLive;
        const target = document.getElementById(toggle.dataset.cmLiveTarget);
        const response = await ask(url, 'application/json', seconds);
        const data = await response.json();
        if (target && typeof data.html === 'string') {
            target.innerHTML = data.html;
        }
    }

    function listIsBusy() {
        const form = document.getElementById('changelist-form');
        if (!form) {
            return false;
        }
        if (form.querySelector('input.action-select:checked, #action-toggle:checked')) {
            return true;
        }
        const action = form.querySelector('select[name=action]');
        return Boolean(action && action.value);
    }

    function replace(selector, fresh) {
        const old = document.querySelector(selector);
        const next = fresh.querySelector(selector);
        if (old && next) {
            old.replaceWith(document.importNode(next, true));
        }
    }

    // The filters, each opened or closed as the user left it (the server renders them all
    // open), and left alone while the user is in them.
    function replaceKeepingOpen(selector, fresh) {
        const old = document.querySelector(selector);
        if (!old || old.contains(document.activeElement)) {
            return;
        }
        const opened = Array.from(old.querySelectorAll('details')).map((d) => d.open);
        replace(selector, fresh);
        const current = document.querySelector(selector);
        if (current) {
            current.querySelectorAll('details').forEach((details, index) => {
                if (index < opened.length) {
                    details.open = opened[index];
                }
            });
        }
    }

    function bodiesOf(table) {
        return Array.from(table.tBodies).map((body) => body.innerHTML).join('');
    }

    async function refreshList(toggle, seconds) {
        if (listIsBusy()) {
            return false;
        }
        const response = await ask(window.location.href, 'text/html', seconds);
        const fresh = new DOMParser().parseFromString(await response.text(), 'text/html');
        if (!fresh.getElementById('changelist')) {
            throw new Error(gettextOr('the page answered something else: reload it'));
        }
        if (listIsBusy()) {
            return false;  // a row was selected while the page was asked for
        }
        const table = document.getElementById('result_list');
        const freshTable = fresh.getElementById('result_list');
        let rowsChanged = true;
        if (table && freshTable) {
            rowsChanged = bodiesOf(table) !== bodiesOf(freshTable);
            if (rowsChanged) {
                Array.from(table.tBodies).forEach((body) => body.remove());
                Array.from(freshTable.tBodies).forEach((body) => {
                    table.appendChild(document.importNode(body, true));
                });
            }
        } else {
            // The list was empty, or is now: its whole form (the admin renders no table
            // for an empty list).
            replace('#changelist-form', fresh);
        }
        replace('#changelist .paginator', fresh);
        replaceKeepingOpen('#changelist-filter', fresh);
        const counter = document.querySelector('.action-counter');
        const freshCounter = fresh.querySelector('.action-counter');
        if (counter && freshCounter) {
            counter.dataset.actionsIcnt = freshCounter.dataset.actionsIcnt;
            counter.textContent = freshCounter.textContent;
        }
        // The admin's actions script holds the old checkboxes: hand it the new ones (only
        // when they changed: each call adds its listeners to the page).
        const allToggle = document.getElementById('action-toggle');
        const boxes = document.querySelectorAll('tr input.action-select');
        if (rowsChanged && allToggle && boxes.length && typeof window.Actions === 'function') {
            allToggle.replaceWith(allToggle.cloneNode(true));
            window.Actions(boxes);
        }
        return true;
    }

    function start(toggle) {
        const seconds = Number(toggle.dataset.cmLiveSeconds) || 5;
        const isList = toggle.dataset.cmLive === 'list';
        let timer = null;
        let running = false;

        async function tick() {
            if (!toggle.checked || document.hidden || running) {
                return;
            }
            running = true;
            try {
                const done = isList ? await refreshList(toggle, seconds)
                    : (await refreshDashboard(toggle, seconds), true);
                setStatus(toggle, done ? gettextOr('updated at ') + now()
                    : gettextOr('paused while rows are selected'));
            } catch (error) {
                setStatus(toggle, gettextOr('could not refresh: ') + error.message, true);
            } finally {
                running = false;
            }
        }

        function schedule() {
            window.clearInterval(timer);
            timer = null;
            if (toggle.checked) {
                timer = window.setInterval(tick, seconds * 1000);
            } else {
                setStatus(toggle, '');
            }
        }

        toggle.checked = stored();
        toggle.addEventListener('change', () => {
            store(toggle.checked);
            schedule();
            tick();
        });
        document.addEventListener('visibilitychange', () => {
            if (!document.hidden) {
                tick();  // catch up at once when the tab is shown again
            }
        });
        schedule();
    }

    function gettextOr(text) {
        return typeof window.gettext === 'function' ? window.gettext(text) : text;
    }

    function ready(fn) {
        if (document.readyState !== 'loading') {
            fn();
        } else {
            document.addEventListener('DOMContentLoaded', fn);
        }
    }

    ready(() => {
        document.querySelectorAll('input[data-cm-live]').forEach(start);
    });
}

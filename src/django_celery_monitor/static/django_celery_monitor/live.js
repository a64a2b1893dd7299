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

    async function refreshDashboard(toggle) {
        const url = toggle.dataset.cmLive;
        const target = document.getElementById(toggle.dataset.cmLiveTarget);
        const response = await fetch(url, {
            credentials: 'same-origin',
            headers: {'Accept': 'application/json'},
            cache: 'no-store',
        });
        if (!response.ok) {
            throw new Error(String(response.status));
        }
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

    async function refreshList() {
        if (listIsBusy()) {
            return false;
        }
        const response = await fetch(window.location.href, {
            credentials: 'same-origin',
            headers: {'Accept': 'text/html'},
            cache: 'no-store',
        });
        if (!response.ok) {
            throw new Error(String(response.status));
        }
        const fresh = new DOMParser().parseFromString(await response.text(), 'text/html');
        if (listIsBusy()) {
            return false;  // a row was selected while the page was asked for
        }
        const table = document.getElementById('result_list');
        const freshTable = fresh.getElementById('result_list');
        if (table && freshTable) {
            Array.from(table.tBodies).forEach((body) => body.remove());
            Array.from(freshTable.tBodies).forEach((body) => {
                table.appendChild(document.importNode(body, true));
            });
        } else {
            replace('#changelist-form .results', fresh);
        }
        replace('#changelist .paginator', fresh);
        replace('#changelist-filter', fresh);
        const counter = document.querySelector('.action-counter');
        const freshCounter = fresh.querySelector('.action-counter');
        if (counter && freshCounter) {
            counter.dataset.actionsIcnt = freshCounter.dataset.actionsIcnt;
            counter.textContent = freshCounter.textContent;
        }
        // The admin's actions script holds the old checkboxes: hand it the new ones.
        const allToggle = document.getElementById('action-toggle');
        const boxes = document.querySelectorAll('tr input.action-select');
        if (allToggle && boxes.length && typeof window.Actions === 'function') {
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
                const done = isList ? await refreshList() : (await refreshDashboard(toggle), true);
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

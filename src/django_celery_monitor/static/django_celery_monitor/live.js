/* django-celery-monitor: the live refresh of the dashboard and of the task and worker lists.
 *
 * A checkbox with data-cm-live="<url>" turns it on or off (remembered in this browser).
 * While it is on and the tab is visible, the page asks again every few seconds:
 * - the dashboard asks its JSON endpoint, whose "html" (rendered and escaped by the server)
 *   replaces the element named by data-cm-live-target;
 * - a list (data-cm-live="list") asks its own URL again and, when its list changed, takes
 *   the new one (rows, counts, paginator) and the filters; it skips a turn while rows are
 *   selected or an action is chosen.
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

    // The status line changes at every refresh; a screen reader hears it only when its kind
    // changes ('updated', 'paused', 'failed'), not the time of each refresh.
    function setStatus(toggle, text, kind) {
        const status = toggle.closest('.cm-toolbar')?.querySelector('.cm-live-status');
        if (status) {
            const same = status.dataset.cmKind === (kind || '');
            status.setAttribute('aria-live', same ? 'off' : 'polite');
            status.dataset.cmKind = kind || '';
            status.textContent = text;
            status.classList.toggle('cm-live-failed', kind === 'failed');
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
        if (action && action.value) {
            return true;
        }
        // The list of actions being opened or walked through (a browser does not tell
        // whether its menu is open): replacing the form would close it under the pointer.
        // Not once it was left alone a while, nor while the window is in the background,
        // where it keeps the focus.
        const active = document.activeElement;
        return Boolean(active && active.tagName === 'SELECT' && form.contains(active)
            && document.hasFocus() && Date.now() - choosing < CHOOSING_MS);
    }

    // When a select of the list was last pressed or typed in.
    const CHOOSING_MS = 30000;
    let choosing = 0;

    function noteChoosing(event) {
        if (event.target instanceof Element
                && event.target.closest('#changelist-form select')) {
            choosing = Date.now();
        }
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

    // The admin's actions script (actions.js) binds the list's checkboxes when the page
    // loads, and adds listeners to the document and the window at each call: a list
    // replaced must be bound anew, and the listeners of the old one removed, or each
    // refresh would keep the old rows alive and add to what every key press runs. Wrapped
    // (this script runs before the page's DOMContentLoaded, when actions.js binds the
    // rows), each call notes what it added to the document and the window.
    let actionListeners = null;

    function wrapActions() {
        const original = window.Actions;
        if (typeof original !== 'function' || original.cmWrapped) {
            return;
        }
        const wrapped = function (checkboxes, options) {
            const added = [];
            const targets = [document, window];
            const own = targets.map(
                (target) => Object.prototype.hasOwnProperty.call(target, 'addEventListener'));
            const saved = targets.map((target) => target.addEventListener);
            targets.forEach((target, index) => {
                target.addEventListener = function (type, listener, listenerOptions) {
                    added.push([target, type, listener, listenerOptions]);
                    return saved[index].call(this, type, listener, listenerOptions);
                };
            });
            try {
                return original.call(this, checkboxes, options);
            } finally {
                targets.forEach((target, index) => {
                    if (own[index]) {
                        target.addEventListener = saved[index];
                    } else {
                        delete target.addEventListener;
                    }
                });
                actionListeners = added;
            }
        };
        wrapped.cmWrapped = true;
        window.Actions = wrapped;
    }

    function bindActions() {
        // The old list's listeners go with it, even when the new one has no rows to bind.
        (actionListeners || []).forEach(([target, type, listener, listenerOptions]) => {
            target.removeEventListener(type, listener, listenerOptions);
        });
        actionListeners = null;
        const boxes = document.querySelectorAll('tr input.action-select');
        if (boxes.length && typeof window.Actions === 'function') {
            window.Actions(boxes);
        }
    }

    // The list's form as the server rendered it, without its CSRF token (new in each
    // answer): the list is replaced only when this changed.
    function formSignature(form) {
        const copy = form.cloneNode(true);
        copy.querySelectorAll('input[name=csrfmiddlewaretoken]').forEach((input) => {
            input.remove();
        });
        return copy.innerHTML;
    }

    // How to find the focused element again in the new list (a row's checkbox, a link).
    function focusSelector(element) {
        if (element.id) {
            return '#' + CSS.escape(element.id);
        }
        const name = element.getAttribute('name');
        if (name) {
            const value = element.getAttribute('value');
            return `[name="${CSS.escape(name)}"]`
                + (value === null ? '' : `[value="${CSS.escape(value)}"]`);
        }
        const href = element.getAttribute('href');
        return href === null ? null : `a[href="${CSS.escape(href)}"]`;
    }

    let listSignature = null;

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
        // The form holds the rows, the action bar (its counts and "Select all"), the
        // paginator and the note of a capped count: all of it, or none.
        const form = document.getElementById('changelist-form');
        const freshForm = fresh.getElementById('changelist-form');
        if (form && freshForm) {
            const signature = formSignature(freshForm);
            if (listSignature === null) {
                listSignature = formSignature(form);
            }
            if (signature !== listSignature) {
                listSignature = signature;
                const focused = form.contains(document.activeElement)
                    ? focusSelector(document.activeElement) : null;
                const next = document.importNode(freshForm, true);
                form.replaceWith(next);
                if (focused) {
                    next.querySelector(focused)?.focus({preventScroll: true});
                }
                bindActions();
            }
        }
        replace('#changelist-search .quiet', fresh);
        replaceKeepingOpen('#changelist-filter', fresh);
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
                if (done) {
                    setStatus(toggle, gettextOr('updated at ') + now(), 'updated');
                } else {
                    setStatus(toggle, gettextOr('paused while rows are selected or an action is chosen'), 'paused');
                }
            } catch (error) {
                setStatus(toggle, gettextOr('could not refresh: ') + error.message, 'failed');
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

    wrapActions();
    ready(() => {
        // On the list's container, which a refresh keeps (it replaces the form in it).
        const changelist = document.getElementById('changelist');
        if (changelist) {
            changelist.addEventListener('pointerdown', noteChoosing, true);
            changelist.addEventListener('keydown', noteChoosing, true);
        }
        document.querySelectorAll('input[data-cm-live]').forEach(start);
    });
}

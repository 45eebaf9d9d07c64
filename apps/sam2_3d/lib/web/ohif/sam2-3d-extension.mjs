// sam2-3d's OHIF extension, loaded at run time by the prebuilt OHIF 3.10 that monailabel 0.8.5 serves
// (app-config.js lists this module's URL in `extensions`; the bundle's appInit imports it with
// window.browserImportFunction and registers it like a built-in extension). No build step, no React.
//
// It closes three gaps of the MONAI Label mode (lib/web/ohif_config.py serves it):
// * Save: a toolbar button that stores the mode's labelmap (the SAM 2 result the panel drew, with the
//   brush/eraser corrections) as the image's final label through PUT /datastore/label; on a DICOMweb
//   datastore the server writes it to the PACS as a DICOM SEG with named segments.
// * Brush / Eraser buttons: the mode creates those tools but shows them in no panel.
// * Progress and errors of /infer: the panel shows a fixed "Failed to Run Inference" text and a 4 s toast;
//   here every /infer request of this server is observed (the panel's axios uses XMLHttpRequest) and a
//   running toast counts the seconds, then says "done in N s" or shows the server's `detail`.

const ID = 'sam2-3d';
// this file is served at <api>/ohif/sam2-3d/extension.mjs: the API root is two folders up
const API = new URL('../../', import.meta.url);
const SEGMENTATION_ID = '1'; // the MONAI Label panel draws every result into segmentation '1'

let notifications = null; // uiNotificationService, set in preRegistration
let runs = 0;
let lastError = null; // an error notice stays 20 s to be read; the user's next action takes it away

function showError(title, message) {
  clearError();
  lastError = notifications.show({ title, message, type: 'error', duration: 20000 });
}

function clearError() {
  if (lastError !== null) notifications.hide(lastError);
  lastError = null;
}

function isInfer(url) {
  return url.origin === API.origin && url.pathname.startsWith(API.pathname + 'infer/');
}

// The server's reason for a refusal: FastAPI's {"detail": "..."} (or a list of {msg}), else the raw text.
export function detailOf(body) {
  let text = '';
  try {
    text = typeof body === 'string' ? body : new TextDecoder().decode(body);
    const json = JSON.parse(text);
    const detail = json.detail ?? json;
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) return detail.map(d => d.msg || JSON.stringify(d)).join('; ');
    return JSON.stringify(detail);
  } catch (e) {
    return text.slice(0, 500) || 'no reason given';
  }
}

function watchInference(xhr, url) {
  const model = decodeURIComponent(url.pathname.slice(API.pathname.length + 'infer/'.length));
  clearError();
  const run = ++runs;
  const t0 = performance.now();
  const text = () => `${model} (run ${run}): ${Math.round((performance.now() - t0) / 1000)} s`;
  const first = text();
  let id = notifications.show({ title: 'SAM 2 running', message: first, type: 'loading', duration: Infinity });
  let shown = first;
  const tick = setInterval(() => {
    // Sonner (OHIF's toasts) has no update through the service: the running toast's text is rewritten
    // in place; where it cannot be found, the toast is replaced every 5 s instead.
    const now = text();
    const node = [...document.querySelectorAll('[data-sonner-toast] [data-description]')].find(n => n.textContent === shown);
    if (node) {
      node.textContent = now;
      shown = now;
    } else if (Math.round((performance.now() - t0) / 1000) % 5 === 0) {
      notifications.hide(id);
      id = notifications.show({ title: 'SAM 2 running', message: now, type: 'loading', duration: Infinity });
      shown = now;
    }
  }, 1000);
  xhr.addEventListener('loadend', () => {
    clearInterval(tick);
    notifications.hide(id);
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    if (xhr.status === 200) {
      notifications.show({ title: 'SAM 2 done', message: `${model} (run ${run}): done in ${seconds} s`, type: 'success', duration: 5000 });
    } else if (xhr.status === 0) {
      showError(`SAM 2: ${model} failed`, `no answer from the server after ${seconds} s`);
    } else {
      const body = xhr.responseType === '' || xhr.responseType === 'text' ? xhr.responseText : xhr.response;
      showError(`SAM 2: ${model} refused (HTTP ${xhr.status})`, detailOf(body));
    }
  });
}

function observeInferRequests() {
  const proto = XMLHttpRequest.prototype;
  if (proto.__sam2Observed) return;
  proto.__sam2Observed = true;
  const open = proto.open;
  const send = proto.send;
  proto.open = function (method, url, ...rest) {
    try {
      this.__sam2 = { method: String(method).toUpperCase(), url: new URL(url, location.href) };
    } catch (e) {
      this.__sam2 = null;
    }
    return open.call(this, method, url, ...rest);
  };
  proto.send = function (...args) {
    const req = this.__sam2;
    if (notifications && req && req.method === 'POST' && isInfer(req.url)) {
      watchInference(this, req.url);
    }
    return send.apply(this, args);
  };
}

// --- save ----------------------------------------------------------------------------------------

function appLabelIndices(labels) {
  // /info/'s `labels`: a list (index = position + 1) or {name: index}
  const out = {};
  if (Array.isArray(labels)) labels.forEach((name, i) => (out[name] = i + 1));
  else Object.entries(labels || {}).forEach(([name, idx]) => (out[name] = Number(idx)));
  return out;
}

// Segment index (OHIF's, from sorted label names) -> the app's label index, by name; segments the app
// does not know keep a value above the app's own, with their name; 'background' is 0.
export function valueMap(segments, appIndices) {
  const map = new Uint8Array(256);
  const names = {};
  let next = Math.max(0, ...Object.values(appIndices)) + 1;
  for (const seg of Object.values(segments || {})) {
    if (!seg || seg.label === 'background') continue;
    const value = appIndices[seg.label] ?? next++;
    map[seg.segmentIndex & 0xff] = value;
    names[value] = seg.label;
  }
  return { map, names };
}

export function nrrdHeader(volume) {
  const [sx, sy, sz] = volume.spacing;
  const d = volume.direction; // cornerstone: row cosines, column cosines, scan normal (LPS)
  const axis = (v, s) => `(${v.map(c => c * s).join(',')})`;
  return [
    'NRRD0004',
    'type: uint8',
    'dimension: 3',
    'space: left-posterior-superior',
    `sizes: ${volume.dimensions.join(' ')}`,
    `space directions: ${axis(d.slice(0, 3), sx)} ${axis(d.slice(3, 6), sy)} ${axis(d.slice(6, 9), sz)}`,
    'kinds: domain domain domain',
    'endian: little',
    'encoding: gzip',
    `space origin: (${volume.origin.join(',')})`,
    '',
    '',
  ].join('\n');
}

async function gzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('gzip'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function saveLabel({ servicesManager }) {
  const { segmentationService, viewportGridService, displaySetService, uiNotificationService } = servicesManager.services;
  const fail = message => showError('Save label', message);
  clearError();
  const { viewports, activeViewportId } = viewportGridService.getState();
  const viewport = viewports.get(activeViewportId);
  const displaySet = viewport && displaySetService.getDisplaySetByUID(viewport.displaySetInstanceUIDs[0]);
  const segmentation = segmentationService.getSegmentations().find(s => s.segmentationId === SEGMENTATION_ID);
  const volume = segmentation && segmentationService.getLabelmapVolume(SEGMENTATION_ID);
  if (!displaySet || !volume) {
    return fail('nothing to save: connect the MONAI Label panel to the server and run a model first');
  }
  const image = displaySet.SeriesInstanceUID;
  const id = uiNotificationService.show({ title: 'Save label', message: `saving the label of ${image} ...`, type: 'loading', duration: Infinity });
  try {
    const info = await fetch(new URL('info/', API)).then(r => r.json());
    const { map, names } = valueMap(segmentation.segments || segmentation.config?.segments, appLabelIndices(info.labels));
    const scalars = volume.voxelManager.getCompleteScalarDataArray();
    const values = new Uint8Array(scalars.length);
    for (let i = 0; i < scalars.length; i++) values[i] = map[scalars[i] & 0xff];
    const header = new TextEncoder().encode(nrrdHeader(volume));
    const body = await gzip(values);
    const file = new Blob([header, body], { type: 'application/octet-stream' });
    const form = new FormData();
    form.append('params', JSON.stringify({ label_info: Object.entries(names).map(([idx, name]) => ({ name, idx: Number(idx) })) }));
    form.append('label', file, 'label.nrrd');
    const url = new URL('datastore/label', API);
    url.searchParams.set('image', image);
    url.searchParams.set('tag', 'final');
    const response = await fetch(url, { method: 'PUT', body: form });
    uiNotificationService.hide(id);
    if (!response.ok) {
      return fail(`refused (HTTP ${response.status}): ${detailOf(await response.text())}`);
    }
    uiNotificationService.show({
      title: 'Label saved',
      message: `final label of series ${image} saved (${Object.values(names).join(', ') || 'no segment'}); on a PACS it is stored as a DICOM SEG`,
      type: 'success',
      duration: 5000,
    });
  } catch (e) {
    uiNotificationService.hide(id);
    fail(`not saved: ${e.message || e}`);
  }
}

// --- the extension ------------------------------------------------------------------------------

const BUTTONS = [
  {
    id: 'Sam2Brush',
    uiType: 'ohif.radioGroup',
    props: {
      icon: 'icon-tool-brush',
      label: 'Brush (add to the mask)',
      commands: { commandName: 'setToolActiveToolbar', commandOptions: { toolName: 'CircularBrush', toolGroupIds: ['default', 'mpr'] } },
      evaluate: 'evaluate.cornerstoneTool',
    },
  },
  {
    id: 'Sam2Eraser',
    uiType: 'ohif.radioGroup',
    props: {
      icon: 'icon-tool-eraser',
      label: 'Eraser (remove from the mask)',
      commands: { commandName: 'setToolActiveToolbar', commandOptions: { toolName: 'CircularEraser', toolGroupIds: ['default', 'mpr'] } },
      evaluate: 'evaluate.cornerstoneTool',
    },
  },
  {
    id: 'Sam2SaveLabel',
    uiType: 'ohif.radioGroup',
    props: { icon: 'icon-upload', label: 'Save label (final)', commands: 'sam2SaveLabel', evaluate: 'evaluate.action' },
  },
];

export default {
  id: ID,
  preRegistration({ servicesManager }) {
    notifications = servicesManager.services.uiNotificationService;
    observeInferRequests();
  },
  onModeEnter({ servicesManager }) {
    if (!location.pathname.includes('/monai-label')) return;
    // Runs before the mode's own onModeEnter, which creates the primary toolbar section: add after it.
    setTimeout(() => {
      const { toolbarService } = servicesManager.services;
      toolbarService.addButtons(BUTTONS);
      toolbarService.createButtonSection('primary', BUTTONS.map(b => b.id));
    }, 0);
  },
  getCommandsModule({ servicesManager }) {
    return {
      definitions: { sam2SaveLabel: { commandFn: () => saveLabel({ servicesManager }) } },
      defaultContext: 'VIEWER',
    };
  },
};

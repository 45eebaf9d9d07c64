// OHIF configuration served by sam2-3d at /ohif/app-config.js, in place of the one monailabel 0.8.5 ships
// (lib/web/ohif_config.py). Differences from monailabel's: the data source can store (STOW-RS), through the
// app's own route, which checks a DICOM SEG, stores it in the PACS and makes it the series' final label
// (lib/datastore/stow_proxy.py). This OHIF build stores with its WADO client (POST {wadoRoot}/studies);
// newer builds read stowRoot. Every mode the bundle holds is offered (MONAI Label, Segmentation, ...).
// Upload is on: in this build the Segmentation mode's "Export DICOM SEG" fails (TypeError), so a SEG is
// saved by "Download DICOM SEG" and the study list's Upload, which stores through the same route.
// Reject (delete from the PACS) is off.
// `extensions` loads the app's own extension at run time (lib/web/ohif/sam2-3d-extension.mjs): Save label,
// Brush and Eraser in the MONAI Label mode's toolbar, SAM 2 progress and the server's error text.
window.config = {
  routerBasename: '/ohif/',
  showStudyList: true,
  extensions: ['/ohif/sam2-3d/extension.mjs'],
  modes: [],
  showWarningMessageForCrossOrigin: true,
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  defaultDataSourceName: 'dicomweb',
  useSharedArrayBuffer: 'FALSE',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: {
        friendlyName: 'sam2-3d PACS',
        name: 'sam2-3d',
        wadoUriRoot: '/proxy/dicom/wado',
        qidoRoot: '/proxy/dicom/qido',
        wadoRoot: '/proxy/dicom/wado',
        stowRoot: '/proxy/dicom/stow',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: false,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        dicomUploadEnabled: true,
        bulkDataURI: {
          enabled: true,
        },
      },
    },
  ],
};

// The charting library, loaded only by the screens that draw charts (a dynamic import, so
// Vite puts it and its stylesheet in their own chunk and the first screen never loads them).
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';

export default uPlot;

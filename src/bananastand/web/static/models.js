// What the key may use (GET /api/v1/models), asked once per sign-in, and what follows from
// it: the output pixel size and the price of a choice.

import { api } from "./api.js";

let catalogue = null;

/** `{models: [...], sandbox: null | {magicPrompts}}`, fetched on first use. */
export async function loadCatalogue() {
  catalogue ??= await api.models();
  return catalogue;
}

export function modelNamed(name) {
  return catalogue?.models.find((model) => model.model === name) ?? null;
}

/** The aspect ratio among the model's sizes closest to an image's shape: what `auto`
 * picks for a first reference image of that shape. */
export function nearestRatio(model, width, height) {
  const ratios = Object.keys(model.outputSizes[model.resolutions[0]] ?? {});
  const shape = Math.log(width / height);
  let best = null;
  for (const ratio of ratios) {
    const [w, h] = ratio.split(":").map(Number);
    const distance = Math.abs(Math.log(w / h) - shape);
    if (best === null || distance < best.distance) best = { ratio, distance };
  }
  return best?.ratio ?? "1:1";
}

/** `{width, height}` of the output, or null where it is not known yet (`auto` with no
 * reference image to follow). */
export function outputSize(model, aspectRatio, resolution) {
  return model.outputSizes[resolution]?.[aspectRatio] ?? null;
}

// Reading a task record (recordInfo's data): `param` and `resultJson` are JSON strings.

/** The request the task was made from; `{}` if it cannot be read. */
export function paramOf(record) {
  try {
    const param = JSON.parse(record.param || "{}");
    return param && typeof param === "object" ? param : {};
  } catch {
    return {};
  }
}

/** The task's prompt, as its images' alternative text. */
export function promptOf(record) {
  const prompt = paramOf(record).input?.prompt;
  return typeof prompt === "string" ? prompt : "";
}

/** The links of a finished task's results. */
export function resultUrls(record) {
  try {
    return JSON.parse(record.resultJson || "{}").resultUrls ?? [];
  } catch {
    return [];
  }
}

/** The file name a result downloads as: the last part of its link. */
export function fileName(url) {
  return decodeURIComponent(new URL(url).pathname.split("/").pop() || "image");
}

export const isFinal = (record) => record.state === "success" || record.state === "fail";

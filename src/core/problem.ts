import { ERROR_CODES, publicCode, type BulwarkError } from './errors.js';

/** RFC 7807 problem document, plus Bulwark's stable `code` (the public one: see publicCode). */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail?: string;
  instance?: string;
  code: string;
}

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';
const TYPE_PREFIX = 'urn:bulwark:problem:';

export function toProblem(error: BulwarkError, requestId: string | undefined): Problem {
  const code = publicCode(error.code);
  const problem: Problem = {
    type: TYPE_PREFIX + code,
    title: code === error.code ? ERROR_CODES[error.code].title : ERROR_CODES[error.code].title.split(':')[0]!,
    status: error.status,
    code,
  };
  if (error.detail !== undefined) problem.detail = error.detail;
  if (requestId !== undefined) problem.instance = requestId;
  return problem;
}

export function renderProblem(error: BulwarkError, requestId: string | undefined): string {
  return JSON.stringify(toProblem(error, requestId));
}

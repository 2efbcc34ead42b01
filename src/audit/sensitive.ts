/**
 * Credential names: the keys (header names, query parameters, claim and detail
 * fields) whose values the audit log never writes raw, whatever the masking
 * config says. A name is split into words (at `-`, `_`, `.`, spaces and
 * camelCase humps) and also read as one lowercase run without separators
 * (`X-Goog-Api-Key` → `xgoogapikey`). It is a credential name when:
 *
 * - the run ends in `apikey`, `token`, `secret`, `password`, `passwd`, `passphrase`,
 *   `cookie(s)`, `authorization`, `credential(s)`, `privatekey`, `signingkey`,
 *   `subscriptionkey`, `sessionid`, `sessid`, `sessionkey` — `x-goog-api-key`,
 *   `accessToken`, `jsessionid`, `set-cookie`, `authtoken`;
 * - or it is `session`, or its last word is `auth` (`x-auth`);
 * - or one of its words is `token`, `secret(s)`, `password(s)`, `passwd`, `passphrase`,
 *   `pwd`, `cookie(s)`, `authorization`, `credential(s)` — `x-token-value`,
 *   `client_secret_hash` — unless its last word says it holds something about the
 *   credential rather than the credential (`token_type`, `password_length`,
 *   `cookie_count`, `secret_name`: `type`, `count`, `length`, `name`, `url`, …).
 *
 * Ordinary fields stay (`x-request-id`, `keyId`, `tokenizer`, `tokens_remaining`).
 *
 * A run ending in a plural — `tokens`, `apikeys`, `privatekeys`, `signingkeys`,
 * `subscriptionkeys`, `sessionids`, `sessionkeys` — names a list of credentials
 * (`refresh_tokens`, `api_keys`) or a count of them (`max_tokens`, `input_tokens`):
 * `isCredentialListName`, whose text is redacted and whose numbers stay.
 */

const CREDENTIAL_SUFFIX =
  /(?:apikey|token|secret|password|passwd|passphrase|cookies?|authorization|credentials?|privatekey|signingkey|subscriptionkey|sessionid|sessid|sessionkey)$/;

const CREDENTIAL_WORDS: ReadonlySet<string> = new Set([
  'token',
  'secret',
  'secrets',
  'password',
  'passwords',
  'passwd',
  'passphrase',
  'pwd',
  'cookie',
  'cookies',
  'authorization',
  'credential',
  'credentials',
]);

/** Last words that make a credential word's field a property of the credential, not the credential. */
const ABOUT_CREDENTIAL: ReadonlySet<string> = new Set([
  'type',
  'types',
  'count',
  'length',
  'name',
  'names',
  'url',
  'uri',
  'endpoint',
  'expiry',
  'expires',
  'expiration',
  'ttl',
  'lifetime',
  'limit',
  'policy',
]);

const CREDENTIAL_LIST_SUFFIX = /(?:tokens|apikeys|privatekeys|signingkeys|subscriptionkeys|sessionids|sessionkeys)$/;

const CAMEL_HUMP = /([a-z0-9])([A-Z])/g;
const SEPARATORS = /[^a-z0-9]+/;

function wordsOf(name: string): string[] {
  return name.replace(CAMEL_HUMP, '$1 $2').toLowerCase().split(SEPARATORS).filter(Boolean);
}

export function isCredentialListName(name: string): boolean {
  return CREDENTIAL_LIST_SUFFIX.test(wordsOf(name).join(''));
}

export function isCredentialName(name: string): boolean {
  const words = wordsOf(name);
  const run = words.join('');
  if (CREDENTIAL_SUFFIX.test(run) || run === 'session' || words.at(-1) === 'auth') return true;
  if (ABOUT_CREDENTIAL.has(words.at(-1) ?? '')) return false;
  return words.some((w) => CREDENTIAL_WORDS.has(w));
}

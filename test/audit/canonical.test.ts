import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { canonicalize, CanonicalizationError } from '../../src/audit/canonical.js';

/** Parse JSON text as the RFC's examples do (the input is JSON text, not JS). */
const jcs = (text: string) => canonicalize(JSON.parse(text));

describe('RFC 8785 canonicalization', () => {
  it('§3.2.2 / cyberphone testdata values.json: escaping, numbers, literals', () => {
    const input = `{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\\u20ac$\\u000F\\u000aA'\\u0042\\u0022\\u005c\\\\\\"\\/",
      "literals": [null, true, false]
    }`;
    const expected =
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}';
    expect(jcs(input)).toBe(expected);
    // §3.2.4: the UTF-8 bytes, as the RFC lists them in hex.
    expect(Buffer.from(jcs(input), 'utf8').toString('hex')).toBe(
      [
        '7b226c69746572616c73223a5b6e756c6c2c747275652c66616c73655d2c226e756d62657273223a5b3333333333333333',
        '332e333333333333332c31652b33302c342e352c302e3030322c31652d32375d2c22737472696e67223a22e282ac245c75',
        '303030665c6e4127425c225c5c5c5c5c222f227d',
      ].join(''),
    );
  });

  it('§3.2.3 sorting: by UTF-16 code units, not code points or locale', () => {
    const input = `{
      "\\u20ac": "Euro Sign",
      "\\r": "Carriage Return",
      "\\ufb33": "Hebrew Letter Dalet With Dagesh",
      "1": "One",
      "\\ud83d\\ude00": "Emoji: Grinning Face",
      "\\u0080": "Control",
      "\\u00f6": "Latin Small Letter O With Diaeresis"
    }`;
    // (Compared as text: parsing it back would put the integer-like key "1" first, JS object order.)
    expect(jcs(input)).toBe(
      '{"\\r":"Carriage Return","1":"One","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis",' +
        '"\u20ac":"Euro Sign","\ud83d\ude00":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    );
  });

  it('cyberphone testdata: arrays, structures, french, unicode, weird', () => {
    expect(jcs('[56, {"d": true, "10": null, "1": [ ]}]')).toBe('[56,{"1":[],"10":null,"d":true}]');
    expect(jcs('{"1": {"f": {"f": "hi","F": 5} ,"\\n": 56.0}, "10": { }, "": "empty", "a": { }, "111": [ { } ], "A": { }}')).toBe(
      '{"":"empty","1":{"\\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{}],"A":{},"a":{}}',
    );
    expect(
      jcs(
        '{"peach": "This sorting order", "péché": "is wrong according to French", "pêche": "but canonicalization MUST", "sin": "ingnore locale"}',
      ),
    ).toBe(
      '{"peach":"This sorting order","péché":"is wrong according to French","pêche":"but canonicalization MUST","sin":"ingnore locale"}',
    );
    // No Unicode normalization: the text stays as it is.
    expect(jcs('{"Unnormalized Unicode":"\\u1e0d\\u0307"}')).toBe('{"Unnormalized Unicode":"\u1e0d\u0307"}');
    expect(
      jcs(
        '{"\\u20ac": "Euro Sign", "1": "One", "\\u0080": "Control\\u007f", "\\ud83d\\ude02": "Smiley", "\\u00f6": "Latin Small Letter O With Diaeresis", "\\ufb33": "Hebrew Letter Dalet With Dagesh", "</script>": "Browser Challenge"}',
      ),
    ).toBe(
      '{"1":"One","</script>":"Browser Challenge","\u0080":"Control\u007f","\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign","\ud83d\ude02":"Smiley","\ufb33":"Hebrew Letter Dalet With Dagesh"}',
    );
  });

  // Appendix B: IEEE 754 bit patterns and their canonical text.
  const numbers: [string, string][] = [
    ['0000000000000000', '0'],
    ['8000000000000000', '0'],
    ['0000000000000001', '5e-324'],
    ['8000000000000001', '-5e-324'],
    ['7fefffffffffffff', '1.7976931348623157e+308'],
    ['ffefffffffffffff', '-1.7976931348623157e+308'],
    ['4340000000000000', '9007199254740992'],
    ['c340000000000000', '-9007199254740992'],
    ['4430000000000000', '295147905179352830000'],
    ['44b52d02c7e14af5', '9.999999999999997e+22'],
    ['44b52d02c7e14af6', '1e+23'],
    ['44b52d02c7e14af7', '1.0000000000000001e+23'],
    ['444b1ae4d6e2ef4e', '999999999999999700000'],
    ['444b1ae4d6e2ef4f', '999999999999999900000'],
    ['444b1ae4d6e2ef50', '1e+21'],
    ['3eb0c6f7a0b5ed8c', '9.999999999999997e-7'],
    ['3eb0c6f7a0b5ed8d', '0.000001'],
    ['41b3de4355555553', '333333333.3333332'],
    ['41b3de4355555554', '333333333.33333325'],
    ['41b3de4355555555', '333333333.3333333'],
    ['41b3de4355555556', '333333333.3333334'],
    ['41b3de4355555557', '333333333.33333343'],
    ['becbf647612f3696', '-0.0000033333333333333333'],
    ['43143ff3c1cb0959', '1424953923781206.2'],
  ];
  it.each(numbers)('Appendix B: %s → %s', (hex, text) => {
    const value = Buffer.from(hex, 'hex').readDoubleBE(0);
    expect(canonicalize(value)).toBe(text);
    expect(canonicalize([value])).toBe(`[${text}]`);
  });

  it('rejects what is not I-JSON: NaN, Infinity, lone surrogates, undefined, bigint', () => {
    for (const hex of ['7fffffffffffffff', '7ff0000000000000', 'fff0000000000000'])
      expect(() => canonicalize(Buffer.from(hex, 'hex').readDoubleBE(0))).toThrow(CanonicalizationError);
    expect(() => canonicalize({ a: '\ud800' })).toThrow(CanonicalizationError);
    expect(() => canonicalize({ '\udc00': 1 })).toThrow(CanonicalizationError);
    expect(() => canonicalize(undefined)).toThrow(CanonicalizationError);
    expect(() => canonicalize({ a: 1n })).toThrow(CanonicalizationError);
    // A well-formed pair is fine.
    expect(canonicalize('\ud83d\ude00')).toBe('"\ud83d\ude00"');
  });

  it('leaves out undefined members (as the parsed JSON would lack them) and keeps array holes as null', () => {
    expect(canonicalize({ b: 1, a: undefined, c: [undefined, 2] })).toBe('{"b":1,"c":[null,2]}');
    expect(canonicalize(JSON.parse(JSON.stringify({ b: 1, a: undefined })))).toBe('{"b":1}');
  });

  it('is insensitive to key order and whitespace, so any store yields the same hash', () => {
    const a = jcs('{ "b": [1, 2.50, {"y": null, "x": "\\u00e9"}], "a": true }');
    const b = jcs('{"a":true,"b":[1,2.5,{"x":"é","y":null}]}');
    expect(a).toBe(b);
    expect(createHash('sha256').update(a).digest('hex')).toBe(createHash('sha256').update(b).digest('hex'));
  });
});

// Shared prelude of the harness's shader library (like Shadertoy's "Common" tab).
// Prepended to every program in this folder; not a program itself.
//
// Every program reads its randomness from iParams[4] (sixteen U(0,1) values drawn per
// image by the harness) and iTime; P0..P3 name the four vec4s. SEED (from P3.w) offsets
// all lattice hashes, so the same program gives unrelated textures for different draws.

#define PI 3.14159265
#define TAU 6.28318531
#define P0 iParams[0]
#define P1 iParams[1]
#define P2 iParams[2]
#define P3 iParams[3]
#define SEED uint(iParams[3].w * 65535.0)

// Integer hash (the PCG output permutation); inputs are wrapped to 32-bit lattice ids.
uint pcg(uint v) {
    uint s = v * 747796405u + 2891336453u;
    uint w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}
float u2f(uint v) { return float(v >> 8u) * (1.0 / 16777216.0); }
#define SEEDMIX (SEED * 2654435769u)
uint hashu(ivec2 c) { return pcg(uint(c.x) + pcg(uint(c.y) ^ SEEDMIX)); }
uint hashu(ivec3 c) { return pcg(uint(c.x) + pcg(uint(c.y) + pcg(uint(c.z) ^ SEEDMIX))); }
float hash(ivec2 c) { return u2f(hashu(c)); }
float hash(ivec3 c) { return u2f(hashu(c)); }
float hash(float x) { return u2f(pcg(uint(int(floor(x))) + SEED * 7u)); }
vec2 hash2(ivec2 c) { uint h = hashu(c); return vec2(u2f(h), u2f(pcg(h))); }
vec3 hash3(ivec2 c) { uint h = hashu(c); uint g = pcg(h); return vec3(u2f(h), u2f(g), u2f(pcg(g))); }
vec3 hash3(ivec3 c) { uint h = hashu(c); uint g = pcg(h); return vec3(u2f(h), u2f(g), u2f(pcg(g))); }

vec2 fade(vec2 f) { return f * f * f * (f * (f * 6.0 - 15.0) + 10.0); }
vec3 fade(vec3 f) { return f * f * f * (f * (f * 6.0 - 15.0) + 10.0); }

// Value noise in [0, 1].
float vnoise(vec2 p) {
    ivec2 i = ivec2(floor(p));
    vec2 u = fade(fract(p));
    return mix(mix(hash(i), hash(i + ivec2(1, 0)), u.x),
               mix(hash(i + ivec2(0, 1)), hash(i + ivec2(1, 1)), u.x), u.y);
}
float vnoise(vec3 p) {
    ivec3 i = ivec3(floor(p));
    vec3 u = fade(fract(p));
    float a = mix(mix(hash(i), hash(i + ivec3(1, 0, 0)), u.x),
                  mix(hash(i + ivec3(0, 1, 0)), hash(i + ivec3(1, 1, 0)), u.x), u.y);
    float b = mix(mix(hash(i + ivec3(0, 0, 1)), hash(i + ivec3(1, 0, 1)), u.x),
                  mix(hash(i + ivec3(0, 1, 1)), hash(i + ivec3(1, 1, 1)), u.x), u.y);
    return mix(a, b, u.z);
}

// Gradient noise in about [-1, 1].
vec2 grad2(ivec2 c) { float a = hash(c) * TAU; return vec2(cos(a), sin(a)); }
float gnoise(vec2 p) {
    ivec2 i = ivec2(floor(p));
    vec2 f = fract(p);
    vec2 u = fade(f);
    float a = dot(grad2(i), f);
    float b = dot(grad2(i + ivec2(1, 0)), f - vec2(1.0, 0.0));
    float c = dot(grad2(i + ivec2(0, 1)), f - vec2(0.0, 1.0));
    float d = dot(grad2(i + ivec2(1, 1)), f - vec2(1.0, 1.0));
    return 1.4 * mix(mix(a, b, u.x), mix(c, d, u.x), u.y);
}

mat2 rot(float a) { float c = cos(a), s = sin(a); return mat2(c, s, -s, c); }

// Fractional Brownian motion of value noise, in about [0, 1].
float fbm(vec2 p, int octaves, float gain) {
    float sum = 0.0, amp = 0.5, norm = 0.0;
    mat2 m = rot(0.62) * 2.03;
    for (int i = 0; i < octaves; i++) {
        sum += amp * vnoise(p);
        norm += amp;
        p = m * p + vec2(13.7, 7.1);
        amp *= gain;
    }
    return sum / norm;
}
float fbm(vec3 p, int octaves, float gain) {
    float sum = 0.0, amp = 0.5, norm = 0.0;
    for (int i = 0; i < octaves; i++) {
        sum += amp * vnoise(p);
        norm += amp;
        p = p * 2.01 + vec3(5.3, 1.7, 9.2);
        amp *= gain;
    }
    return sum / norm;
}

// Worley / Voronoi: x = distance to nearest feature point, y = second nearest,
// z = a hash of the nearest cell, w unused. `jitter` in [0, 1] spreads the points.
vec4 voronoi(vec2 p, float jitter) {
    ivec2 i = ivec2(floor(p));
    vec2 f = fract(p);
    float d1 = 8.0, d2 = 8.0, id = 0.0;
    for (int y = -1; y <= 1; y++)
    for (int x = -1; x <= 1; x++) {
        ivec2 c = i + ivec2(x, y);
        vec2 o = vec2(x, y) + 0.5 + jitter * (hash2(c) - 0.5) - f;
        float d = dot(o, o);
        if (d < d1) { d2 = d1; d1 = d; id = hash(c + ivec2(917, 331)); }
        else if (d < d2) { d2 = d; }
    }
    return vec4(sqrt(d1), sqrt(d2), id, 0.0);
}

vec3 hsv2rgb(vec3 c) {
    vec3 k = clamp(abs(mod(c.x * 6.0 + vec3(0.0, 4.0, 2.0), 6.0) - 3.0) - 1.0, 0.0, 1.0);
    return c.z * mix(vec3(1.0), k, c.y);
}

// A cosine colour ramp whose phases, frequency and contrast come from two param vec4s.
vec3 palette(float t, vec4 a, vec4 b) {
    vec3 phase = a.xyz;
    float freq = 0.4 + 1.6 * a.w;
    vec3 amp = 0.25 + 0.25 * b.xyz;
    return clamp(0.5 + amp * cos(TAU * (freq * t + phase)) + (b.w - 0.5) * 0.3, 0.0, 1.0);
}

// Three colours drawn from a vec4 (hue, hue spread, saturation, value), blended by t.
vec3 ramp3(float t, vec4 q) {
    vec3 c0 = hsv2rgb(vec3(q.x, 0.4 + 0.6 * q.z, 0.15 + 0.3 * q.w));
    vec3 c1 = hsv2rgb(vec3(q.x + 0.15 + 0.5 * q.y, 0.5 + 0.5 * q.z, 0.55 + 0.2 * q.w));
    vec3 c2 = hsv2rgb(vec3(q.x + 0.3 + q.y, 0.2 + 0.5 * q.w, 0.85 + 0.15 * q.z));
    t = clamp(t, 0.0, 1.0);
    return t < 0.5 ? mix(c0, c1, t * 2.0) : mix(c1, c2, t * 2.0 - 1.0);
}

float smin(float a, float b, float k) {
    float h = clamp(0.5 + 0.5 * (b - a) / k, 0.0, 1.0);
    return mix(b, a, h) - k * h * (1.0 - h);
}

// Centred coordinates: the shorter side spans [-1, 1].
vec2 centered(vec2 fragCoord) {
    return (2.0 * fragCoord - iResolution.xy) / min(iResolution.x, iResolution.y);
}

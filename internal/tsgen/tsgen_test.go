package tsgen_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/channelsapi/channelsapi/internal/tsgen"
)

// obj is a JSON object of a test document.
type obj = map[string]any

// docs returns an AsyncAPI and an OpenAPI document of the one stream
// "things" whose model is model and whose events carry a pk of type pkType;
// list and subscribeList are the data of those requests (nil: none), and
// schemas more components.
func docs(t *testing.T, model obj, pkType string, list, subscribeList obj, schemas obj) (asyncapi, openapi []byte) {
	t.Helper()
	frame := func(payload obj) obj {
		return obj{"type": "object", "properties": obj{"stream": obj{"const": "things"}, "payload": payload}}
	}
	messages := obj{
		"things.event": obj{"payload": frame(obj{"type": "object", "properties": obj{
			"action": obj{"type": "string"},
			"pk":     obj{"type": pkType},
			"data":   obj{"$ref": "#/components/schemas/things"},
		}})},
	}
	for name, data := range map[string]obj{"list": list, "subscribe_list": subscribeList} {
		if data != nil {
			messages["things."+name+".request"] = obj{"payload": frame(obj{"type": "object", "properties": obj{
				"action": obj{"const": name},
				"data":   data,
			}})}
		}
	}
	components := obj{"things": model}
	for k, v := range schemas {
		components[k] = v
	}
	var err error
	asyncapi, err = json.Marshal(obj{
		"asyncapi":   "3.0.0",
		"info":       obj{"title": "Test", "version": "1"},
		"channels":   obj{"socket": obj{"address": "/ws"}},
		"components": obj{"schemas": components, "messages": messages},
	})
	require.NoError(t, err)
	openapi, err = json.Marshal(obj{
		"openapi": "3.1.0",
		"info":    obj{"title": "Test", "version": "1"},
		"paths":   obj{"/things": obj{"get": obj{"operationId": "things.list", "responses": obj{}}}},
	})
	require.NoError(t, err)
	return asyncapi, openapi
}

// generateDocs generates the module of the documents docs returns.
func generateDocs(t *testing.T, model obj, pkType string, list, subscribeList obj, schemas obj) string {
	t.Helper()
	asyncapi, openapi := docs(t, model, pkType, list, subscribeList, schemas)
	return generate(t, asyncapi, openapi)
}

func generate(t *testing.T, asyncapi, openapi []byte) string {
	t.Helper()
	out, err := tsgen.Generate(asyncapi, openapi, "test.json")
	require.NoError(t, err)
	return string(out)
}

// TestPrimaryKeyFromDocument: the primary key is the model's x-primary-key,
// whatever its name, and the pk type follows the key's type, even when
// the model also has an "id" and read-only fields of that type before it.
func TestPrimaryKeyFromDocument(t *testing.T) {
	model := obj{
		"type":          "object",
		"x-primary-key": "code",
		"properties": obj{
			"author": obj{"type": "string", "readOnly": true},
			"code":   obj{"type": "string", "readOnly": true},
			"id":     obj{"type": "integer"},
		},
	}
	out := generateDocs(t, model, "string", nil, nil, nil)
	assert.Contains(t, out, "      primaryKey: \"code\",\n")
	assert.Contains(t, out, "    pk: string;\n")

	// A document that does not say keeps the guess: its "id".
	delete(model, "x-primary-key")
	out = generateDocs(t, model, "integer", nil, nil, nil)
	assert.Contains(t, out, "      primaryKey: \"id\",\n")
	assert.Contains(t, out, "    pk: number;\n")
}

// TestOutputDeterministic: the same documents give the same bytes, also
// when list and subscribe_list give one filter key different schemas (list's
// wins) and each has keys of its own.
func TestOutputDeterministic(t *testing.T) {
	model := obj{"type": "object", "x-primary-key": "id", "properties": obj{"id": obj{"type": "integer"}}}
	list := obj{"type": "object", "properties": obj{
		"name":     obj{"type": "string"},
		"size":     obj{"type": "integer"},
		"page":     obj{"type": "integer"},
		"ordering": obj{"type": "string", "description": "Comma-separated fields of: name, id."},
	}}
	subscribeList := obj{"type": "object", "properties": obj{
		"name":     obj{"type": "boolean"},
		"size":     obj{"type": "array", "items": obj{"type": "integer"}},
		"live":     obj{"type": "boolean"},
		"ordering": obj{"type": "string", "description": "Comma-separated fields of: size."},
	}}
	asyncapi, openapi := docs(t, model, "integer", list, subscribeList, nil)
	first := generate(t, asyncapi, openapi)
	assert.Contains(t, first, "export interface ThingsFilters {\n  live?: boolean;\n  name?: string;\n  size?: number;\n}\n")
	assert.Contains(t, first, `export type ThingsOrdering = "name" | "-name" | "id" | "-id";`)
	for range 100 {
		require.Equal(t, first, generate(t, asyncapi, openapi))
	}
}

// TestSelfReference: a component that refers to itself, directly or through
// another, is declared once under its name and referred to by it; one that
// is only a $ref to itself describes no value and is unknown.
func TestSelfReference(t *testing.T) {
	ref := func(name string) obj { return obj{"$ref": "#/components/schemas/" + name} }
	schemas := obj{
		"Node": obj{"type": "object", "properties": obj{
			"label":    obj{"type": "string"},
			"children": obj{"type": "array", "items": ref("Node")},
			"parent":   obj{"anyOf": []any{ref("Node"), obj{"type": "null"}}},
		}},
		"A":    obj{"type": "object", "properties": obj{"b": ref("B")}},
		"B":    obj{"type": []string{"object", "null"}, "properties": obj{"a": ref("A")}},
		"Loop": ref("Loop"),
		// A component whose name is taken by a stream's type.
		"Things": obj{"type": "object", "properties": obj{"next": ref("Things")}},
	}
	model := obj{"type": "object", "x-primary-key": "id", "properties": obj{
		"id":    obj{"type": "integer"},
		"tree":  ref("Node"),
		"a":     ref("A"),
		"loop":  ref("Loop"),
		"chain": ref("Things"),
	}}
	out := generateDocs(t, model, "integer", nil, nil, schemas)
	assert.Contains(t, out, "export type Node = {\n  children?: Node[];\n  label?: string;\n  parent?: Node | null;\n};\n")
	assert.Contains(t, out, "export type A = {\n  b?: {\n    a?: A;\n  } | null;\n};\n")
	assert.Contains(t, out, "export type Things2 = {\n  next?: Things2;\n};\n")
	assert.Contains(t, out, "  loop?: unknown;\n")
	assert.Contains(t, out, "  tree?: {\n    children?: Node[];\n    label?: string;\n    parent?: Node | null;\n  };\n")
	assert.Equal(t, 1, strings.Count(out, "export type Node ="))
}

// TestQuoting: names and literal types are written as TypeScript reads
// them: identifiers as they are, anything else as a JSON string (JavaScript
// has no \a or \U escapes; U+2028 and U+2029 are escaped).
func TestQuoting(t *testing.T) {
	model := obj{"type": "object", "x-primary-key": "id", "properties": obj{
		"id":              obj{"type": "integer"},
		"plain_$name":     obj{"type": "string"},
		"with-dash":       obj{"type": "string"},
		"bell\a":          obj{"type": "string"},
		"tag\U000E0001":   obj{"type": "string"},
		"line\u2028break": obj{"type": "string"},
		"kind":            obj{"enum": []any{"a\"b", "c\u2029d", "e\U000E0001", 1.5, nil}},
		"fixed":           obj{"const": obj{"x-y": []any{true, "\a"}}},
	}}
	out := generateDocs(t, model, "integer", nil, nil, nil)
	for _, want := range []string{
		"  plain_$name?: string;\n",
		`  "with-dash"?: string;` + "\n",
		`  "bell\u0007"?: string;` + "\n",
		"  \"tag\U000E0001\"?: string;\n",
		`  "line\u2028break"?: string;` + "\n",
		"  kind?: \"a\\\"b\" | \"c\\u2029d\" | \"e\U000E0001\" | 1.5 | null;\n",
		`  fixed?: { "x-y": readonly [true, "\u0007"] };` + "\n",
	} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, `\a`)
	assert.NotContains(t, out, `\U`)
	assert.NotContains(t, out, `\x`)
	assert.NotContains(t, out, "\u2028")
	assert.NotContains(t, out, "\u2029")

	// The header's // comments stay one line each.
	asyncapi, openapi := docs(t, model, "integer", nil, nil, nil)
	asyncapi = []byte(strings.Replace(string(asyncapi), `"title":"Test"`, `"title":"T\nexport const x = 1;\u2028y"`, 1))
	out = generate(t, asyncapi, openapi)
	assert.Contains(t, out, "\n// T export const x = 1; y 1\n/* eslint-disable */\n")
}

// TestFormats: the runtime schema gives each stream the formats of its
// model's fields, in the order of their names: a format of the field
// itself, of a nullable field (anyOf with null, or a type that includes
// null), of a $ref, and of a constrained $ref (allOf); none for fields
// without one, for branches that disagree, or for a $ref to itself. A
// model without formats has no formats key.
func TestFormats(t *testing.T) {
	ref := func(name string) obj { return obj{"$ref": "#/components/schemas/" + name} }
	schemas := obj{
		"Stamp": obj{"type": "string", "format": "date-time"},
		"Loop":  ref("Loop"),
	}
	model := obj{"type": "object", "x-primary-key": "id", "properties": obj{
		"id":         obj{"type": "integer"},
		"pub_date":   obj{"type": "string", "format": "date-time"},
		"day":        obj{"type": "string", "format": "date"},
		"key":        obj{"type": "string", "format": "uuid"},
		"closed_at":  obj{"type": []string{"string", "null"}, "format": "date-time"},
		"opened_at":  obj{"anyOf": []any{obj{"type": "string", "format": "date-time"}, obj{"type": "null"}}},
		"stamp":      ref("Stamp"),
		"checked_at": obj{"allOf": []any{ref("Stamp"), obj{"minLength": 1}}},
		"mixed":      obj{"anyOf": []any{obj{"type": "string", "format": "date"}, obj{"type": "string", "format": "uuid"}}},
		"loop":       ref("Loop"),
		"title":      obj{"type": "string"},
	}}
	out := generateDocs(t, model, "integer", nil, nil, schemas)
	assert.Contains(t, out, `      formats: { checked_at: "date-time", closed_at: "date-time", day: "date", key: "uuid", opened_at: "date-time", pub_date: "date-time", stamp: "date-time" },`+"\n    },\n")

	plain := obj{"type": "object", "x-primary-key": "id", "properties": obj{"id": obj{"type": "integer"}, "title": obj{"type": "string"}}}
	out = generateDocs(t, plain, "integer", nil, nil, nil)
	assert.NotContains(t, out, "formats")
	assert.Contains(t, out, "      actions: {},\n    },\n")
}
